"""Encoder and decoder of the world model (spec sections 2.1 and 2.5).

Modules take inputs with one flat batch axis; ``model.py`` flattens and restores leading axes.
Images enter as floats already scaled to [-1, 1] (``normalize_image``), channels last.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from diwa_jax.world_model.conv_layers import conv2d_s2, conv_transpose2d_s2

CAMERAS = ("rgb_static", "rgb_gripper")
VARIANTS = ("vision", "hybrid", "state")

# Conv geometry for 64x64 inputs: 64 -> 31 -> 14 -> 6 -> 2 (encoder), 1 -> 5 -> 13 -> 30 -> 64 (decoder).
ENCODER_KERNELS = (4, 4, 4, 4)
ENCODER_DEPTH_MULTS = (1, 2, 4, 8)
DECODER_KERNELS = (5, 5, 6, 6)
DECODER_DEPTH_MULTS = (4, 2, 1)  # hidden ConvT widths; the last ConvT outputs RGB
IMAGE_EMBED_MULT = 32  # flattened tower output = 8 * depth * 2 * 2 = 32 * depth

xavier_uniform = nn.initializers.xavier_uniform()
zeros = nn.initializers.zeros_init()


@jax.custom_vjp
def elu(x: jnp.ndarray) -> jnp.ndarray:
    """``nn.elu`` (alpha 1), whose gradient is computed from the output (``y + 1`` where ``x <= 0``): the
    backward pass reads the activation the next layer keeps anyway instead of a stored ``exp(x)``."""
    return nn.elu(x)


def _elu_fwd(x):
    y = nn.elu(x)
    return y, y


def _elu_bwd(y, grad):
    return (grad * jnp.where(y > 0, 1.0, y + 1.0),)


elu.defvjp(_elu_fwd, _elu_bwd)


def dense(features: int, use_bias: bool = True, name: str | None = None) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, kernel_init=xavier_uniform, bias_init=zeros, name=name)


def normalize_image(image_uint8: jnp.ndarray) -> jnp.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]: ``(x / 255 - 0.5) / 0.5``."""
    return (image_uint8.astype(jnp.float32) / 255.0 - 0.5) / 0.5


class StateMLP(nn.Module):
    """Linear -> ELU -> Linear (hybrid/state encoder and state head)."""

    hidden: int
    features: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        hidden = nn.elu(dense(self.hidden, name="hidden")(x))
        return dense(self.features, name="out")(hidden)


class StridedConv(nn.Module):
    """``nn.Conv`` (or, with ``transpose``, ``nn.ConvTranspose``) ``(features, (kernel, kernel), strides=2,
    padding="VALID")``: the same parameters (``kernel`` (k, k, in, out) Xavier-uniform, ``bias`` zeros) and
    outputs, computed as one matrix product (and, transposed, a depth-to-space)."""

    features: int
    kernel: int
    transpose: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param("kernel", xavier_uniform, (self.kernel, self.kernel, x.shape[-1], self.features))
        op = conv_transpose2d_s2 if self.transpose else conv2d_s2
        return op(x, kernel, self.param("bias", zeros, (self.features,)))


class ConvTower(nn.Module):
    """Four Conv(k4, s2, VALID) + ELU layers, flattened: (N, 64, 64, 3) -> (N, 32 * depth)."""

    depth: int

    @nn.compact
    def __call__(self, image: jnp.ndarray) -> jnp.ndarray:
        x = image
        for i, (kernel, mult) in enumerate(zip(ENCODER_KERNELS, ENCODER_DEPTH_MULTS)):
            x = elu(StridedConv(self.depth * mult, kernel, name=f"Conv_{i}")(x))  # nn.Conv's names: same checkpoints
        return x.reshape(x.shape[0], -1)


class Encoder(nn.Module):
    """obs dict (flat batch) -> embed.

    vision: [fuse(tower(static), tower(gripper)), proprio]; hybrid: [fuse(...), state MLP(state)];
    state: state MLP(state).
    """

    variant: str
    cnn_depth: int
    state_hidden: int
    state_embed: int
    ln_eps: float

    @nn.compact
    def __call__(self, obs: dict) -> jnp.ndarray:
        parts = []
        if self.variant != "state":
            towers = [ConvTower(self.cnn_depth, name=f"{camera}_tower")(obs[camera]) for camera in CAMERAS]
            fused = dense(IMAGE_EMBED_MULT * self.cnn_depth, name="fuse")(jnp.concatenate(towers, axis=-1))
            parts.append(nn.elu(nn.LayerNorm(epsilon=self.ln_eps, name="fuse_norm")(fused)))
        if self.variant == "vision":
            parts.append(obs["proprio"])
        else:
            parts.append(StateMLP(self.state_hidden, self.state_embed, name="state_mlp")(obs["state"]))
        return jnp.concatenate(parts, axis=-1)


class ImageDeconv(nn.Module):
    """(N, 32 * depth) -> ConvT k5,5,6,6 s2 VALID with ELU between -> (N, 64, 64, 3), no output activation."""

    depth: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = x.reshape(x.shape[0], 1, 1, -1)
        widths = [self.depth * mult for mult in DECODER_DEPTH_MULTS] + [3]
        for i, (kernel, width) in enumerate(zip(DECODER_KERNELS, widths)):
            x = StridedConv(width, kernel, transpose=True, name=f"ConvTranspose_{i}")(x)
            if i < len(widths) - 1:
                x = elu(x)
        return x


class Decoder(nn.Module):
    """feature (flat batch) -> dict of reconstruction means.

    Image variants: one Linear(feature -> 32 * depth) shared by both cameras' ConvT stacks.
    hybrid/state: a state head feature -> state_hidden -> ELU -> state_dim.
    """

    variant: str
    cnn_depth: int
    state_hidden: int
    state_dim: int

    @nn.compact
    def __call__(self, feature: jnp.ndarray) -> dict:
        out = {}
        if self.variant != "state":
            shared = dense(IMAGE_EMBED_MULT * self.cnn_depth, name="shared_linear")(feature)
            for camera in CAMERAS:
                out[camera] = ImageDeconv(self.cnn_depth, name=f"{camera}_deconv")(shared)
        if self.variant != "vision":
            out["state"] = StateMLP(self.state_hidden, self.state_dim, name="state_head")(feature)
        return out
