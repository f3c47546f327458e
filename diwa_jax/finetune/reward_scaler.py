"""Running reward scaling (spec section 6.1 "Rewards", 6.2 step 3, section 10).

Rewards are divided by the standard deviation of a running backward-discounted return and clipped.
The statistics start from a pseudo-observation (mean 0, var 1, count 1e-4) and absorb every
(env, time) return of each iteration with the parallel mean/variance merge. Each env's discounted
return is carried across iterations and restarts wherever ``firsts`` marks an episode's first step.
"""
import jax
import jax.numpy as jnp
from flax import struct

INITIAL_COUNT = 1e-4
VAR_EPS = 1e-8  # added to the variance before the square root


@struct.dataclass
class RewardScalerState:
    mean: jnp.ndarray  # () running mean of the discounted returns
    var: jnp.ndarray  # () running (population) variance
    count: jnp.ndarray  # () number of returns absorbed, plus the initial pseudo-count
    running_return: jnp.ndarray  # (N,) each env's discounted return after the last step seen


def init_reward_scaler(n_envs: int) -> RewardScalerState:
    return RewardScalerState(
        mean=jnp.zeros((), jnp.float32),
        var=jnp.ones((), jnp.float32),
        count=jnp.full((), INITIAL_COUNT, jnp.float32),
        running_return=jnp.zeros((n_envs,), jnp.float32),
    )


def discounted_returns(running_return, rewards, firsts, gamma):
    """Backward-discounted returns ``G_t = r_t + gamma * (1 - first_t) * G_{t-1}`` of a ``(T, N)`` rollout,
    seeded with ``G_{-1} = running_return (N,)``."""

    def step(previous, inputs):
        reward, first = inputs
        current = reward + gamma * (1.0 - first) * previous
        return current, current

    return jax.lax.scan(step, running_return, (rewards, firsts.astype(rewards.dtype)))[1]


def update_and_scale(state: RewardScalerState, rewards, firsts, gamma, clip):
    """Absorb this iteration's discounted returns, then scale ``rewards (T, N)``.

    ``firsts (T, N)`` marks the first step of an episode (bool or 0/1). Returns
    ``(new_state, clip(rewards / sqrt(var + 1e-8), -clip, clip))`` with the *updated* variance.
    """
    if rewards.ndim != 2 or firsts.shape != rewards.shape or rewards.shape[1:] != state.running_return.shape:
        raise ValueError(
            "diwa_jax/finetune/reward_scaler.py: rewards and firsts must be time-major (T, N) with N = "
            f"{state.running_return.shape[0]} envs (init_reward_scaler(n_envs)); got rewards {rewards.shape}, "
            f"firsts {firsts.shape}")
    rewards = rewards.astype(jnp.float32)
    returns = discounted_returns(state.running_return, rewards, firsts, gamma)
    batch_mean = returns.mean()
    batch_var = returns.var()
    batch_count = returns.size
    total = state.count + batch_count
    delta = batch_mean - state.mean
    merged_m2 = state.var * state.count + batch_var * batch_count + delta**2 * state.count * batch_count / total
    new_state = RewardScalerState(
        mean=state.mean + delta * batch_count / total,
        var=merged_m2 / total,
        count=total,
        running_return=returns[-1],
    )
    scaled = jnp.clip(rewards / jnp.sqrt(new_state.var + VAR_EPS), -clip, clip)
    return new_state, scaled
