"""The world model's public API: pure functions of ``params`` and a static ``WorldModelSpec``.

Sequences are batch-major ``(B, T, ...)``; time loops are ``lax.scan`` over T. The experiment's spec is built
from its config by ``diwa_jax/specs.py``; the defaults are the paper's sizes with CALVIN's inputs (64x64 images,
18-D proprio, 51-D state, 7-D actions).

Randomness: ``observe``/``imagine`` split their key into T keys, one per step, in time order, so a
step-by-step loop of ``obs_step``/``img_step`` with ``jax.random.split(key, T)[t]`` gives the same samples.
"""
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from diwa_jax.types import Latent
from diwa_jax.world_model.networks import (CAMERAS, IMAGE_EMBED_MULT, VARIANTS, Decoder, Encoder, StateMLP,
                                           normalize_image)
from diwa_jax.world_model.rssm import (RSSMCell, balanced_kl_loss, categorical_entropy, sample_onehot)

BATCH_KEYS = ("prev_action", "reset")


@dataclasses.dataclass(frozen=True)
class WorldModelSpec:
    """Everything the world-model functions need from ``config.wm``, frozen and hashable (a jit static)."""

    variant: str = "vision"
    cnn_depth: int = 48
    deter: int = 1024
    stoch: int = 32
    classes: int = 32
    hidden: int = 1000
    state_hidden: int = 400
    state_embed: int = 512
    ln_eps: float = 1e-3
    temperature: float = 1.0
    kl_balance: float = 0.8
    kl_weight: float = 0.3
    free_nats: float = 0.0
    image_weight: float = 1.0
    state_weight: float = 1.0
    inverse_dynamics_weight: float = 0.0
    inverse_dynamics_hidden: int = 400
    lr: float = 3e-4
    adam_eps: float = 1e-5
    weight_decay: float = 0.05
    clip_norm: float = 100.0
    carry_state: bool = True
    image_size: int = 64
    proprio_dim: int = 18
    state_dim: int = 51
    action_dim: int = 7

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"config.wm.variant={self.variant!r}: choose one of {', '.join(VARIANTS)}")
        if self.image_size != 64:
            raise ValueError(f"world model: image_size={self.image_size}, but the conv geometry (spec 2.1) "
                             "needs 64x64 images; resize the cameras to 64 (config.data.image_size)")
        if self.inverse_dynamics_weight > 0 and not self.uses_images:
            raise ValueError("config.wm.inverse_dynamics_weight > 0 needs camera images, but variant 'state' "
                             "has none; set it to 0 or use variant 'vision' or 'hybrid'")

    @property
    def uses_images(self) -> bool:
        return self.variant != "state"

    @property
    def uses_state(self) -> bool:
        return self.variant != "vision"

    @property
    def feature_dim(self) -> int:
        return self.deter + self.stoch * self.classes

    @property
    def embed_dim(self) -> int:
        return self.image_embed_dim + (self.state_embed if self.uses_state else self.proprio_dim)

    @property
    def image_embed_dim(self) -> int:
        """The leading slice of the embedding that comes from the cameras."""
        return IMAGE_EMBED_MULT * self.cnn_depth if self.uses_images else 0

    @property
    def uses_inverse_dynamics(self) -> bool:
        return self.inverse_dynamics_weight > 0

    @property
    def obs_keys(self) -> tuple[str, ...]:
        """The observation keys this variant reads."""
        images = CAMERAS if self.uses_images else ()
        return images + (("state",) if self.uses_state else ("proprio",))


@struct.dataclass
class WorldModel:
    """A world model: its parameters and the static spec they were made for."""

    params: Any
    spec: WorldModelSpec = struct.field(pytree_node=False)


@struct.dataclass
class WMTrainState:
    step: jnp.ndarray
    params: Any
    opt_state: Any
    key: jax.Array
    carry: Latent  # last posterior of the previous batch (stop-gradient), per stream


def _encoder(spec: WorldModelSpec) -> Encoder:
    return Encoder(spec.variant, spec.cnn_depth, spec.state_hidden, spec.state_embed, spec.ln_eps)


def _rssm(spec: WorldModelSpec) -> RSSMCell:
    return RSSMCell(spec.deter, spec.stoch, spec.classes, spec.hidden, spec.ln_eps)


def _decoder(spec: WorldModelSpec) -> Decoder:
    return Decoder(spec.variant, spec.cnn_depth, spec.state_hidden, spec.state_dim)


def _inverse_dynamics(spec: WorldModelSpec) -> StateMLP:
    return StateMLP(spec.inverse_dynamics_hidden, spec.action_dim)


def _rssm_apply(params, spec: WorldModelSpec, method, *args):
    return _rssm(spec).apply({"params": params["rssm"]}, *args, method=method)


def _check_obs(obs: dict, spec: WorldModelSpec, where: str) -> tuple[int, ...]:
    """Validate the keys/shapes/dtypes this variant reads; return the leading (batch) shape."""
    expected = {camera: (spec.image_size, spec.image_size, 3) for camera in CAMERAS}
    expected.update(proprio=(spec.proprio_dim,), state=(spec.state_dim,))
    lead = None
    for name in spec.obs_keys:
        if name not in obs:
            raise KeyError(f"{where}: observation key {name!r} missing (variant {spec.variant!r} reads "
                           f"{', '.join(spec.obs_keys)}); got keys {sorted(obs)}")
        value, trailing = obs[name], expected[name]
        if tuple(value.shape[value.ndim - len(trailing):]) != trailing:
            raise ValueError(f"{where}: obs[{name!r}] has shape {tuple(value.shape)}, expected (..., "
                             f"{', '.join(map(str, trailing))})")
        if name in CAMERAS and value.dtype != np.uint8:
            raise TypeError(f"{where}: obs[{name!r}] has dtype {value.dtype}; pass the raw uint8 image "
                            "(normalisation to [-1, 1] happens inside)")
        this_lead = tuple(value.shape[:value.ndim - len(trailing)])
        if lead is not None and this_lead != lead:
            raise ValueError(f"{where}: obs[{name!r}] has leading shape {this_lead}, other keys {lead}")
        lead = this_lead
    return lead


def initial_latent(batch_size: int, spec: WorldModelSpec) -> Latent:
    """Zero latent ``deter (B, D)``, ``stoch (B, S, C)``."""
    return Latent(deter=jnp.zeros((batch_size, spec.deter), jnp.float32),
                  stoch=jnp.zeros((batch_size, spec.stoch, spec.classes), jnp.float32))


@functools.partial(jax.jit, static_argnums=1)  # one compiled program instead of hundreds of eager ops
def init_params(key: jax.Array, spec: WorldModelSpec) -> dict:
    """Parameters ``{"encoder", "rssm", "decoder"}`` (and ``"inverse_dynamics"`` where its weight is
    positive): Xavier-uniform kernels, zero biases, orthogonal GRU recurrent kernels."""
    # Initializers draw from an RngBitGenerator key seeded by ``key``: every threefry call site (one per
    # parameter and per flax fold-in) costs ~1 s of XLA CPU compile time, the bit generator almost none.
    init_key = jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="unsafe_rbg")
    enc_key, rssm_key, dec_key, inv_key = jax.random.split(init_key, 4)
    dummy_obs = {
        **{camera: jnp.zeros((1, spec.image_size, spec.image_size, 3), jnp.float32) for camera in CAMERAS},
        "proprio": jnp.zeros((1, spec.proprio_dim), jnp.float32),
        "state": jnp.zeros((1, spec.state_dim), jnp.float32),
    }
    params = {
        "encoder": _encoder(spec).init(enc_key, dummy_obs)["params"],
        "rssm": _rssm(spec).init(rssm_key, initial_latent(1, spec), jnp.zeros((1, spec.action_dim)),
                                 jnp.zeros((1, spec.embed_dim)))["params"],
        "decoder": _decoder(spec).init(dec_key, jnp.zeros((1, spec.feature_dim)))["params"],
    }
    if spec.uses_inverse_dynamics:
        params["inverse_dynamics"] = _inverse_dynamics(spec).init(
            inv_key, jnp.zeros((1, 2 * spec.image_embed_dim)))["params"]
    return params


def encode(params, spec: WorldModelSpec, obs: dict) -> jnp.ndarray:
    """obs (any leading shape): uint8 cameras (..., 64, 64, 3), proprio (..., 18), state (..., 51),
    as the variant needs -> embed (..., embed_dim)."""
    lead = _check_obs(obs, spec, "world_model.encode")
    flat = {}
    for name in spec.obs_keys:
        value = obs[name].reshape(-1, *obs[name].shape[len(lead):])
        flat[name] = normalize_image(value) if name in CAMERAS else value.astype(jnp.float32)
    embed = _encoder(spec).apply({"params": params["encoder"]}, flat)
    return embed.reshape(*lead, embed.shape[-1])


def _apply_reset(latent: Latent, reset: jnp.ndarray) -> Latent:
    keep = 1.0 - jnp.asarray(reset, latent.deter.dtype)
    return Latent(deter=latent.deter * keep[..., None], stoch=latent.stoch * keep[..., None, None])


def obs_step(params, spec: WorldModelSpec, latent: Latent, prev_action: jnp.ndarray, embed: jnp.ndarray,
             reset: jnp.ndarray, key: jax.Array) -> tuple[Latent, jnp.ndarray, jnp.ndarray]:
    """One filter step: zero (h, z) where ``reset``, transition with a_{t-1}, posterior sample from
    (h_t, embed_t). Returns (posterior Latent, prior logits, posterior logits), logits (..., S, C)."""
    action_input = _rssm_apply(params, spec, RSSMCell.action_input, prev_action)
    embed_input = _rssm_apply(params, spec, RSSMCell.embed_input, embed)
    post, post_logits = _posterior_step(params, spec, latent, action_input, embed_input, reset, key)
    return post, _rssm_apply(params, spec, RSSMCell.prior, post.deter), post_logits


def _posterior_step(params, spec: WorldModelSpec, latent: Latent, action_input: jnp.ndarray,
                    embed_input: jnp.ndarray, reset: jnp.ndarray, key: jax.Array) -> tuple[Latent, jnp.ndarray]:
    """``obs_step`` without the prior, from the action's and the embedding's input terms."""
    deter = _rssm_apply(params, spec, RSSMCell.transition_from, _apply_reset(latent, reset), action_input)
    post_logits = _rssm_apply(params, spec, RSSMCell.posterior_from, deter, embed_input)
    return Latent(deter=deter, stoch=sample_onehot(post_logits, key, spec.temperature)), post_logits


def img_step(params, spec: WorldModelSpec, latent: Latent, action: jnp.ndarray, key: jax.Array) -> Latent:
    """One imagination step (spec 2.4): transition with ``action``, z' sampled from the prior."""
    deter = _rssm_apply(params, spec, RSSMCell.transition, latent, action)
    prior_logits = _rssm_apply(params, spec, RSSMCell.prior, deter)
    return Latent(deter=deter, stoch=sample_onehot(prior_logits, key, spec.temperature))


def _time_major(tree):
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), tree)


def observe(params, spec: WorldModelSpec, obs_seq: dict, prev_actions: jnp.ndarray, resets: jnp.ndarray,
            init_latent: Latent, key: jax.Array) -> tuple[Latent, jnp.ndarray, jnp.ndarray]:
    """Filter a sequence: obs (B, T, ...), prev_actions (B, T, A), resets (B, T) bool, init_latent (B, ...).
    All frames are encoded in one batch, then ``obs_step`` is scanned over T.
    Returns (posterior Latent (B, T, ...), prior logits (B, T, S, C), posterior logits (B, T, S, C))."""
    return _filter(params, spec, encode(params, spec, obs_seq), prev_actions, resets, init_latent, key)


def _filter(params, spec: WorldModelSpec, embed: jnp.ndarray, prev_actions: jnp.ndarray, resets: jnp.ndarray,
            init_latent: Latent, key: jax.Array) -> tuple[Latent, jnp.ndarray, jnp.ndarray]:
    """``observe`` from the sequence's embeddings (B, T, embed_dim): ``obs_step`` over T, with the work
    that does not depend on the recurrent state outside the time loop (the action and embedding terms
    before it, the prior after it, each one product over all B*T steps): inside a loop every product
    also accumulates its weight gradient step by step."""
    steps = embed.shape[1]
    action_inputs = _rssm_apply(params, spec, RSSMCell.action_input, prev_actions)
    embed_inputs = _rssm_apply(params, spec, RSSMCell.embed_input, embed)

    def step(latent, inputs):
        post, post_logits = _posterior_step(params, spec, latent, *inputs)
        return post, (post, post_logits)

    inputs = (*_time_major((action_inputs, embed_inputs, resets)), jax.random.split(key, steps))
    _, (post, post_logits) = jax.lax.scan(step, init_latent, inputs)
    post, post_logits = _time_major((post, post_logits))
    return post, _rssm_apply(params, spec, RSSMCell.prior, post.deter), post_logits


def imagine(params, spec: WorldModelSpec, latent: Latent, actions: jnp.ndarray, key: jax.Array) -> Latent:
    """Roll the prior from ``latent`` (B, ...) with ``actions`` (B, T, A): the T latents after each action,
    (B, T, ...)."""

    def step(state, inputs):
        action, step_key = inputs
        state = img_step(params, spec, state, action, step_key)
        return state, state

    _, latents = jax.lax.scan(step, latent, (_time_major(actions), jax.random.split(key, actions.shape[1])))
    return _time_major(latents)


def decode(params, spec: WorldModelSpec, feature: jnp.ndarray) -> dict:
    """feature (..., D + S*C) -> {rgb_static, rgb_gripper: (..., 64, 64, 3) in the [-1, 1] image scale}
    for image variants, plus {state: (..., 51)} for hybrid/state."""
    lead = feature.shape[:-1]
    out = _decoder(spec).apply({"params": params["decoder"]}, feature.reshape(-1, feature.shape[-1]))
    return {name: value.reshape(*lead, *value.shape[1:]) for name, value in out.items()}


def decode_state(params, spec: WorldModelSpec, feature: jnp.ndarray) -> jnp.ndarray:
    """feature (..., D + S*C) -> the state head's normalised state (..., 51), without the image decoders
    (hybrid/state variants): ``decode(...)["state"]`` at the cost of one MLP."""
    if not spec.uses_state:
        raise ValueError(f"decode_state: variant {spec.variant!r} has no state head; use 'hybrid' or 'state'")
    head = StateMLP(spec.state_hidden, spec.state_dim)
    return head.apply({"params": params["decoder"]["state_head"]}, feature)


def _check_batch(batch: dict, spec: WorldModelSpec, where: str) -> tuple[int, int]:
    lead = _check_obs(batch, spec, where)
    if len(lead) != 2:
        raise ValueError(f"{where}: expected sequences (B, T, ...), got leading shape {lead}")
    for name in BATCH_KEYS:
        if name not in batch:
            raise KeyError(f"{where}: batch key {name!r} missing; got keys {sorted(batch)}")
    if tuple(batch["prev_action"].shape) != (*lead, spec.action_dim):
        raise ValueError(f"{where}: batch['prev_action'] has shape {tuple(batch['prev_action'].shape)}, "
                         f"expected {(*lead, spec.action_dim)}")
    if tuple(batch["reset"].shape) != lead:
        raise ValueError(f"{where}: batch['reset'] has shape {tuple(batch['reset'].shape)}, expected {lead}")
    return lead


def _reconstruction_losses(recon: dict, target: dict, spec: WorldModelSpec) -> dict:
    """Per-step 0.5 * squared error sums (unit-variance Gaussian NLL up to a constant), shape (...)."""
    losses = {}
    if spec.uses_images:
        losses["image_loss"] = sum(
            0.5 * jnp.sum(jnp.square(recon[camera] - normalize_image(target[camera])), axis=(-3, -2, -1))
            for camera in CAMERAS)
    if spec.uses_state:
        losses["state_loss"] = 0.5 * jnp.sum(jnp.square(recon["state"] - target["state"]), axis=-1)
    return losses


def inverse_dynamics_loss(params, spec: WorldModelSpec, embed: jnp.ndarray, prev_action: jnp.ndarray,
                          reset: jnp.ndarray) -> jnp.ndarray:
    """Mean over consecutive frame pairs of one episode of 0.5 * SSE of a_{t-1} predicted from the camera
    embeddings of frames t-1 and t (embed (B, T, E), prev_action (B, T, A), reset (B, T)).

    Only the cameras' part of the embedding is read: proprio, the state embedding and the deterministic
    state all contain a_{t-1} by construction (pose deltas, the transition's input), so a head on them learns
    nothing about the scene; on images the encoder must see what the action did."""
    images = embed[..., :spec.image_embed_dim]
    pairs = jnp.concatenate([images[:, :-1], images[:, 1:]], axis=-1)
    predicted = _inverse_dynamics(spec).apply({"params": params["inverse_dynamics"]},
                                              pairs.reshape(-1, pairs.shape[-1]))
    target = prev_action[:, 1:].reshape(-1, spec.action_dim)
    same_episode = 1.0 - jnp.asarray(reset[:, 1:], jnp.float32).reshape(-1)
    per_pair = 0.5 * jnp.sum(jnp.square(predicted - target), axis=-1)
    return jnp.sum(per_pair * same_episode) / jnp.maximum(jnp.sum(same_episode), 1.0)


def loss_fn(params, spec: WorldModelSpec, batch: dict, init_latent: Latent, key: jax.Array) -> tuple[jnp.ndarray,
                                                                                        tuple[dict, Latent]]:
    """Negative ELBO with KL balancing (spec 2.2), averaged over B*T:
    ``kl_weight * KL_balanced + image_weight * 0.5*SSE(both cameras) + state_weight * 0.5*SSE(state)``,
    plus ``inverse_dynamics_weight * inverse_dynamics_loss`` where that weight is positive.
    Returns (loss, (metrics, last posterior Latent (B, ...)))."""
    _check_batch(batch, spec, "world_model.loss_fn")
    embed = encode(params, spec, batch)
    post, prior_logits, post_logits = _filter(params, spec, embed, batch["prev_action"], batch["reset"],
                                              init_latent, key)
    recon = decode(params, spec, post.feature())
    metrics = {name: jnp.mean(value) for name, value in _reconstruction_losses(recon, batch, spec).items()}
    kl_loss, kl = balanced_kl_loss(post_logits, prior_logits, spec.kl_balance, spec.free_nats)
    loss = spec.kl_weight * kl_loss
    loss += spec.image_weight * metrics.get("image_loss", 0.0) + spec.state_weight * metrics.get("state_loss", 0.0)
    if spec.uses_inverse_dynamics:
        metrics["inverse_dynamics_loss"] = inverse_dynamics_loss(params, spec, embed, batch["prev_action"],
                                                                 batch["reset"])
        loss += spec.inverse_dynamics_weight * metrics["inverse_dynamics_loss"]
    metrics.update(loss=loss, kl=kl, kl_loss=kl_loss,
                   prior_entropy=jnp.mean(categorical_entropy(prior_logits)),
                   post_entropy=jnp.mean(categorical_entropy(post_logits)))
    last = jax.tree.map(lambda x: x[:, -1], post)
    return loss, (metrics, last)


def make_optimizer(spec: WorldModelSpec) -> optax.GradientTransformation:
    """clip_by_global_norm(clip_norm) then AdamW(lr, 0.9, 0.999, eps, weight_decay on every parameter).

    Per parameter leaf: raveling the gradients into one vector (``optax.flatten``) compiles faster but costs
    a concatenation of every gradient each step, which XLA:CPU runs far below memory speed."""
    adamw = optax.adamw(spec.lr, b1=0.9, b2=0.999, eps=spec.adam_eps, weight_decay=spec.weight_decay)
    if spec.clip_norm > 0:
        adamw = optax.chain(optax.clip_by_global_norm(spec.clip_norm), adamw)
    return adamw


@functools.partial(jax.jit, static_argnums=(1, 2))
def create_train_state(key: jax.Array, spec: WorldModelSpec, batch_size: int) -> WMTrainState:
    """Fresh parameters and optimiser state, a zero carry for ``batch_size`` streams."""
    init_key, state_key = jax.random.split(key)
    params = init_params(init_key, spec)
    return WMTrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=make_optimizer(spec).init(params),
                        key=state_key, carry=initial_latent(batch_size, spec))


def make_train_step(spec: WorldModelSpec):
    """A jitted ``train_step(state, batch) -> (state, metrics)`` (state donated). The batch is the data
    sampler's dict (B, T, ...). The initial latent is the carried posterior (``carry_state``) or zeros;
    resets in the batch zero it where streams start new episodes."""
    optimizer = make_optimizer(spec)

    def train_step(state: WMTrainState, batch: dict) -> tuple[WMTrainState, dict]:
        key, loss_key = jax.random.split(state.key)
        init = state.carry if spec.carry_state else jax.tree.map(jnp.zeros_like, state.carry)
        grad_fn = jax.value_and_grad(lambda p: loss_fn(p, spec, batch, init, loss_key), has_aux=True)
        (_, (metrics, last)), grads = grad_fn(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, key=key,
                                  carry=jax.lax.stop_gradient(last))
        return new_state, metrics

    return jax.jit(train_step, donate_argnums=0)


def open_loop(params, spec: WorldModelSpec, batch: dict, context: int, horizon: int, key: jax.Array) -> dict:
    """Filter the first ``context`` frames of ``batch`` from a zero latent (with the batch's resets), then
    imagine ``horizon`` steps with the true actions ``prev_action[:, context:context + horizon]`` and decode.
    Returns predictions for frames context .. context + horizon - 1: (B, horizon, ...) per decoded key."""
    batch_size, steps = _check_batch(batch, spec, "world_model.open_loop")
    if context < 1 or horizon < 1 or context + horizon > steps:
        raise ValueError(f"world_model.open_loop: context={context} + horizon={horizon} must fit the batch's "
                         f"T={steps} (both >= 1)")
    obs_key, imagine_key = jax.random.split(key)
    observed = {name: batch[name][:, :context] for name in (*spec.obs_keys, *BATCH_KEYS)}
    post, _, _ = observe(params, spec, observed, observed["prev_action"], observed["reset"],
                         initial_latent(batch_size, spec), obs_key)
    last = jax.tree.map(lambda x: x[:, -1], post)
    imagined = imagine(params, spec, last, batch["prev_action"][:, context:context + horizon], imagine_key)
    return decode(params, spec, imagined.feature())


def openloop_error(params, spec: WorldModelSpec, batch: dict, context: int, horizon: int, key: jax.Array) -> dict:
    """Mean squared error of ``open_loop`` predictions vs the true frames (image MSE per pixel/channel in the
    [-1, 1] scale, averaged over both cameras, frames and batch), and of the baseline that repeats the last
    context frame. Image variants: image_mse, baseline_image_mse, image_mse_ratio (model / baseline, < 1 is
    better than the baseline) and image_mse_per_step (horizon,); hybrid/state: state_mse, baseline_state_mse."""
    return prediction_error(spec, batch, open_loop(params, spec, batch, context, horizon, key), context, horizon)


def prediction_error(spec: WorldModelSpec, batch: dict, predicted: dict, context: int, horizon: int) -> dict:
    """``openloop_error``'s metrics for predictions already made (``open_loop``'s output for ``batch``)."""
    metrics = {}
    future = slice(context, context + horizon)
    if spec.uses_images:
        truth = jnp.stack([normalize_image(batch[camera][:, future]) for camera in CAMERAS])
        last_seen = jnp.stack([normalize_image(batch[camera][:, context - 1:context]) for camera in CAMERAS])
        model_error = jnp.square(jnp.stack([predicted[camera] for camera in CAMERAS]) - truth)
        per_step = jnp.mean(model_error, axis=(0, 1, 3, 4, 5))
        metrics["image_mse_per_step"] = per_step
        metrics["image_mse"] = jnp.mean(per_step)
        metrics["baseline_image_mse"] = jnp.mean(jnp.square(last_seen - truth))
        metrics["image_mse_ratio"] = metrics["image_mse"] / metrics["baseline_image_mse"]
    if spec.uses_state:
        truth = batch["state"][:, future]
        metrics["state_mse"] = jnp.mean(jnp.square(predicted["state"] - truth))
        metrics["baseline_state_mse"] = jnp.mean(jnp.square(batch["state"][:, context - 1:context] - truth))
    return metrics
