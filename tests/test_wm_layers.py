"""The world model's reformulated convolutions equal the plain flax and XLA layers: values and gradients."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diwa_jax.world_model import conv_layers, networks
from diwa_jax.world_model.conv_layers import conv2d_s2, conv2d_valid, conv_transpose2d_s2

TOL = dict(rtol=1e-4, atol=1e-5)


def _check_equal(plain: nn.Module, fast, x: jnp.ndarray) -> None:
    """Same outputs and same gradients (parameters and input) of a random quadratic readout."""
    params = plain.init(jax.random.key(1), x)["params"]
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)  # nonzero bias
    readout = jax.random.normal(jax.random.key(3), plain.apply({"params": params}, x).shape)

    def loss(apply, p, inputs):
        return jnp.sum(jnp.square(apply(p, inputs) - readout))

    plain_apply = lambda p, inputs: plain.apply({"params": p}, inputs)  # noqa: E731
    fast_apply = lambda p, inputs: fast(inputs, p["kernel"], p["bias"])  # noqa: E731
    np.testing.assert_allclose(jax.jit(fast_apply)(params, x), jax.jit(plain_apply)(params, x), **TOL)
    plain_grads = jax.jit(jax.grad(lambda p, i: loss(plain_apply, p, i), argnums=(0, 1)))(params, x)
    fast_grads = jax.jit(jax.grad(lambda p, i: loss(fast_apply, p, i), argnums=(0, 1)))(params, x)
    for got, want in zip(jax.tree.leaves(fast_grads), jax.tree.leaves(plain_grads)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(want))))


# Kernel gradients summed over blocks of 1, 3 and all 6 images (the block size follows BLOCK_BYTES).
# Odd sides (padded to even inside) and even ones.
@pytest.mark.parametrize("block_bytes", [1, 3 * (9 * 9 * 4 + 7 * 6 * 5) * 4, 1 << 30])
@pytest.mark.parametrize("size", [(9, 9), (9, 8), (8, 10)])
def test_stride1_conv_equals_xla_conv(monkeypatch, block_bytes, size):
    monkeypatch.setattr(conv_layers, "BLOCK_BYTES", block_bytes)
    x = jax.random.normal(jax.random.key(0), (6, *size, 4))
    kernel = jax.random.normal(jax.random.key(1), (3, 4, 4, 5))
    readout = jax.random.normal(jax.random.key(2), (6, size[0] - 2, size[1] - 3, 5))
    plain = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "VALID",  # noqa: E731
                                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def loss(conv, x, k):
        return jnp.sum(jnp.square(conv(x, k) - readout))

    np.testing.assert_allclose(jax.jit(conv2d_valid)(x, kernel), jax.jit(plain)(x, kernel), **TOL)
    got = jax.jit(jax.grad(lambda x, k: loss(conv2d_valid, x, k), argnums=(0, 1)))(x, kernel)
    want = jax.jit(jax.grad(lambda x, k: loss(plain, x, k), argnums=(0, 1)))(x, kernel)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(w))))


# The encoder's geometry (64 -> 31 -> 14 -> 6 -> 2, even and odd sizes) and a wider kernel.
@pytest.mark.parametrize("size, kernel, channels", [(64, 4, (3, 4)), (31, 4, (4, 5)), (14, 4, (5, 6)),
                                                    (6, 4, (6, 8)), (11, 6, (3, 2)), (9, 2, (2, 3))])
def test_strided_conv_equals_flax_conv(size, kernel, channels):
    x = jax.random.normal(jax.random.key(0), (2, size, size, channels[0]))
    plain = nn.Conv(channels[1], (kernel, kernel), strides=(2, 2), padding="VALID")
    _check_equal(plain, conv2d_s2, x)


# The decoder's geometry (1 -> 5 -> 13 -> 30 -> 64, odd and even kernels) and a non-square input.
@pytest.mark.parametrize("shape, kernel, out", [((1, 1, 12), 5, 4), ((5, 5, 4), 5, 3), ((13, 13, 3), 6, 2),
                                                ((30, 30, 2), 6, 3), ((4, 7, 3), 5, 2), ((3, 3, 2), 3, 2)])
def test_strided_conv_transpose_equals_flax_conv_transpose(shape, kernel, out):
    x = jax.random.normal(jax.random.key(0), (2, *shape))
    plain = nn.ConvTranspose(out, (kernel, kernel), strides=(2, 2), padding="VALID")
    _check_equal(plain, conv_transpose2d_s2, x)


class _PlainTower(nn.Module):
    depth: int

    @nn.compact
    def __call__(self, x):
        for kernel, mult in zip(networks.ENCODER_KERNELS, networks.ENCODER_DEPTH_MULTS):
            x = nn.elu(nn.Conv(self.depth * mult, (kernel, kernel), strides=(2, 2), padding="VALID",
                               kernel_init=networks.xavier_uniform, bias_init=networks.zeros)(x))
        return x.reshape(x.shape[0], -1)


class _PlainDeconv(nn.Module):
    depth: int

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], 1, 1, -1)
        widths = [self.depth * mult for mult in networks.DECODER_DEPTH_MULTS] + [3]
        for i, (kernel, width) in enumerate(zip(networks.DECODER_KERNELS, widths)):
            x = nn.ConvTranspose(width, (kernel, kernel), strides=(2, 2), padding="VALID",
                                 kernel_init=networks.xavier_uniform, bias_init=networks.zeros)(x)
            x = nn.elu(x) if i < len(widths) - 1 else x
        return x


@pytest.mark.parametrize("fast, plain, shape", [(networks.ConvTower, _PlainTower, (2, 64, 64, 3)),
                                                (networks.ImageDeconv, _PlainDeconv, (2, 32 * 2))])
def test_towers_keep_the_flax_parameters_and_outputs(fast, plain, shape):
    """Same parameter tree (names, shapes and initial values: checkpoints stay loadable) and the same outputs."""
    x = jax.random.normal(jax.random.key(0), shape)
    fast_params = jax.jit(fast(2).init)(jax.random.key(4), x)["params"]
    plain_params = jax.jit(plain(2).init)(jax.random.key(4), x)["params"]
    assert jax.tree.structure(fast_params) == jax.tree.structure(plain_params)
    for got, want in zip(jax.tree.leaves(fast_params), jax.tree.leaves(plain_params)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(jax.jit(fast(2).apply)({"params": plain_params}, x),
                               jax.jit(plain(2).apply)({"params": plain_params}, x), **TOL)


def test_bad_kernels_name_the_layer():
    with pytest.raises(ValueError, match="conv2d_s2: kernel .* even"):
        conv2d_s2(jnp.zeros((1, 8, 8, 1)), jnp.zeros((3, 3, 1, 1)))
    with pytest.raises(ValueError, match="conv_transpose2d_s2: kernel .* square"):
        conv_transpose2d_s2(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 4, 1, 1)))


def test_elu_equals_flax_elu_in_values_and_gradients():
    x = jnp.concatenate([jax.random.normal(jax.random.key(0), (1000,)) * 3, jnp.array([0.0, -0.0, 1e-8, -1e-8])])
    np.testing.assert_array_equal(jax.jit(networks.elu)(x), jax.jit(nn.elu)(x))
    weights = jax.random.normal(jax.random.key(1), x.shape)
    got = jax.jit(jax.grad(lambda v: jnp.sum(weights * networks.elu(v))))(x)
    want = jax.jit(jax.grad(lambda v: jnp.sum(weights * nn.elu(v))))(x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
