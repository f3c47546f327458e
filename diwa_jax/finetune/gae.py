"""Generalised advantage estimation over a time-major rollout (spec section 6.2, step 4)."""
import jax
import jax.numpy as jnp


def gae(rewards, values, terminated, last_value, gamma, lam):
    """Advantages and returns of a ``(T, N)`` rollout, computed by a reverse ``lax.scan``.

    ``delta_t = r_t + gamma * V_{t+1} * (1 - term_t) - V_t`` and
    ``A_t = delta_t + gamma * lam * (1 - term_t) * A_{t+1}``, with ``V_T = last_value``.

    Only termination cuts the recursion. A truncated episode is auto-reset inside the rollout, so
    ``V_{t+1}`` there is the value of the *new* episode's first state (DPPO quirk, spec section 9 row 7).

    Args:
      rewards, values: ``(T, N)`` float.
      terminated: ``(T, N)`` bool or 0/1.
      last_value: ``(N,)``, the value of the latent after the last step (bootstrap).
    Returns:
      ``(advantages, returns)``, both ``(T, N)``, with ``returns = advantages + values``.
    """
    if rewards.ndim != 2 or values.shape != rewards.shape or terminated.shape != rewards.shape:
        raise ValueError(
            "diwa_jax/finetune/gae.py: rewards, values and terminated must all be time-major (T, N); got "
            f"{rewards.shape}, {values.shape}, {terminated.shape}")
    if last_value.shape != rewards.shape[1:]:
        raise ValueError(
            f"diwa_jax/finetune/gae.py: last_value must be (N,) = {rewards.shape[1:]}; got {last_value.shape}")
    continues = 1.0 - terminated.astype(values.dtype)
    next_values = jnp.concatenate([values[1:], last_value[None]], axis=0)
    deltas = rewards + gamma * next_values * continues - values

    def step(next_advantage, inputs):
        delta, cont = inputs
        advantage = delta + gamma * lam * cont * next_advantage
        return advantage, advantage

    _, advantages = jax.lax.scan(step, jnp.zeros_like(last_value), (deltas, continues), reverse=True)
    return advantages, advantages + values
