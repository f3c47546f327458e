"""Behaviour-cloning pre-training of the diffusion policy (spec section 3.3).

epsilon-prediction MSE; AdamW whose learning rate is stepped once per epoch (linear warm-up from min_lr to lr,
then a cosine toward min_lr that ends ``cosine_epochs`` after the start, warm-up included); EMA of the weights
updated at the end of every ``ema_every``-th epoch, a plain copy of the model before ``ema_start``.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from diwa_jax.policy.denoiser import DenoiserSpec, denoise_eps, init_denoiser
from diwa_jax.data.batching import expert_chunks
from diwa_jax.data.calvin_format import DataError
from diwa_jax.policy.schedule import DDPMSchedule

LOSS_KEY_SEED = 12345  # fixed noise for the reported final loss, comparable across runs
LOSS_EVAL_SAMPLES = 4096


@dataclasses.dataclass(frozen=True)
class BCSpec:
    """BC pre-training of a denoiser: its sizes, the per-epoch learning-rate schedule, AdamW's decay, the EMA."""

    denoiser: DenoiserSpec
    lr: float
    min_lr: float
    weight_decay: float
    warmup_epochs: int
    cosine_epochs: int
    ema_decay: float
    ema_every: int
    ema_start: int


@struct.dataclass
class BCBatch:
    cond: jnp.ndarray  # (B, C) latent feature at the chunk's first step
    actions: jnp.ndarray  # (B, Ta, A) the expert chunk


@struct.dataclass
class BCTrainState:
    step: jnp.ndarray  # gradient steps taken
    params: dict
    ema_params: dict
    opt_state: optax.OptState
    key: jax.Array


def bc_loss(params: dict, schedule: DDPMSchedule, cond: jnp.ndarray, actions: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
    """Mean squared error of the predicted noise at ``t ~ U{0..K-1}``, ``x_t = sqrt(acp_t) a0 + sqrt(1-acp_t) eps``."""
    t_key, eps_key = jax.random.split(key)
    t = jax.random.randint(t_key, (actions.shape[0],), 0, schedule.num_steps)
    eps = jax.random.normal(eps_key, actions.shape, actions.dtype)
    acp = schedule.alphas_cumprod[t][:, None, None]
    x_t = jnp.sqrt(acp) * actions + jnp.sqrt(1.0 - acp) * eps
    return jnp.mean(jnp.square(denoise_eps(params, x_t, t, cond) - eps))


def bc_epoch_learning_rate(spec: BCSpec) -> optax.Schedule:
    """Learning rate as a function of the epoch index."""
    if spec.cosine_epochs <= spec.warmup_epochs:
        raise ValueError(
            f"config.policy.cosine_epochs ({spec.cosine_epochs}) must exceed "
            f"config.policy.warmup_epochs ({spec.warmup_epochs}): the cosine cycle includes the warm-up"
        )
    warmup = optax.linear_schedule(spec.min_lr, spec.lr, spec.warmup_epochs)
    cosine = optax.cosine_decay_schedule(
        spec.lr, spec.cosine_epochs - spec.warmup_epochs, alpha=spec.min_lr / spec.lr
    )
    return optax.join_schedules([warmup, cosine], [spec.warmup_epochs])


def bc_learning_rate(spec: BCSpec, steps_per_epoch: int) -> optax.Schedule:
    """Learning rate as a function of the gradient step: constant within an epoch."""
    per_epoch = bc_epoch_learning_rate(spec)
    return lambda step: per_epoch(step // steps_per_epoch)


def bc_optimizer(spec: BCSpec, steps_per_epoch: int) -> optax.GradientTransformation:
    """AdamW (PyTorch defaults: betas 0.9/0.999, eps 1e-8; decay on every parameter)."""
    if steps_per_epoch < 1:
        raise ValueError(f"BC: steps_per_epoch must be >= 1, got {steps_per_epoch} (fewer samples than a batch?)")
    return optax.adamw(bc_learning_rate(spec, steps_per_epoch), weight_decay=spec.weight_decay)


def create_bc_state(
    key: jax.Array, spec: BCSpec, cond_dim: int, steps_per_epoch: int
) -> BCTrainState:
    init_key, state_key = jax.random.split(key)
    params = init_denoiser(init_key, spec.denoiser, cond_dim)
    return BCTrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=params,
        opt_state=bc_optimizer(spec, steps_per_epoch).init(params),
        key=state_key,
    )


def ema_after_step(
    ema_params: dict, params: dict, step: jnp.ndarray, *, steps_per_epoch: int, decay: float, every: int, start: int
) -> dict:
    """EMA after gradient step number ``step`` (1-based). At the end of epoch e with ``e % every == 0``:
    ``ema = params`` if ``e < start`` else ``decay * ema + (1 - decay) * params``; otherwise unchanged."""
    epoch = step // steps_per_epoch - 1
    at_update = (step % steps_per_epoch == 0) & (epoch % every == 0)
    keep_copy = epoch < start

    def leaf(ema, p):
        averaged = jnp.where(keep_copy, p, decay * ema + (1.0 - decay) * p)
        return jnp.where(at_update, averaged, ema)

    return jax.tree.map(leaf, ema_params, params)


def make_bc_update(spec: BCSpec, schedule: DDPMSchedule, steps_per_epoch: int):
    """Jitted ``update(state, batch: BCBatch) -> (state, {"loss", "lr"})``; one gradient step."""
    optimizer = bc_optimizer(spec, steps_per_epoch)
    learning_rate = bc_learning_rate(spec, steps_per_epoch)

    @jax.jit
    def update(state: BCTrainState, batch: BCBatch):
        key, loss_key = jax.random.split(state.key)
        loss, grads = jax.value_and_grad(bc_loss)(state.params, schedule, batch.cond, batch.actions, loss_key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        step = state.step + 1
        ema_params = ema_after_step(
            state.ema_params, params, step, steps_per_epoch=steps_per_epoch, decay=spec.ema_decay,
            every=spec.ema_every, start=spec.ema_start,
        )
        new_state = BCTrainState(step=step, params=params, ema_params=ema_params, opt_state=opt_state, key=key)
        return new_state, {"loss": loss, "lr": learning_rate(state.step)}

    return update


def bc_samples(windows: np.ndarray, features, rel_actions: np.ndarray, horizon: int) -> tuple:
    """``(rows (M,), cond (M, latent), actions (M, Ta, 7))``: every chunk start of every window whose chunk
    fits in the window, the latent of that row (``features.feature(rows)``) and the next ``horizon`` actions."""
    rows, chunks = expert_chunks(windows, rel_actions, horizon)
    if len(rows) == 0:
        lengths = (windows[:, 1] - windows[:, 0] + 1).tolist()
        raise DataError(f"BC samples: no window is as long as config.policy.horizon={horizon} (lengths {lengths})")
    return rows, features.feature(rows), chunks


def mean_bc_loss(params: dict, schedule: DDPMSchedule, cond: np.ndarray, actions: np.ndarray) -> float:
    """The BC loss on (up to ``LOSS_EVAL_SAMPLES`` of) the samples with fixed noise: a resume-proof report."""
    rows = slice(0, LOSS_EVAL_SAMPLES)
    loss = jax.jit(bc_loss)(params, schedule, jnp.asarray(cond[rows]), jnp.asarray(actions[rows]),
                            jax.random.key(LOSS_KEY_SEED))
    return float(loss)
