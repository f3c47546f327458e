"""DPPO losses on the Dream Diffusion MDP (spec sections 4.1 and 6.2 step 5).

One PPO "row" is one denoising transition ``x_{j} -> x_{j+1}`` of one sample's fine-tuned chain, with
denoising index ``j = 0..K'-1`` (``j = 0``: the noisiest fine-tuned step, ``j = K'-1``: the final one).
``ppo_actor_loss_rows`` is the only loss implementation; the two minibatch modes (spec section 9 row 6)
differ only in how rows are formed:

* ``sample`` (released DiWA / older DPPO): a minibatch of samples, each with all its K' steps
  (``ppo_actor_loss`` expands it into rows);
* ``denoising_step`` (current DPPO): a minibatch of (sample, j) rows drawn from all ``B*K'`` pairs.

Advantages are normalised over the rows of the minibatch with the population std (ddof 0). In ``sample``
mode every sample appears exactly K' times, so this equals normalising over the samples; DPPO's
torch ``std`` is unbiased (ddof 1), a factor ``sqrt((B-1)/B)`` we do not reproduce, so that both
modes agree exactly on the same full batch.
"""
import jax
import jax.numpy as jnp

ADV_NORM_EPS = 1e-8


def clip_schedule(ft_steps: int, clip: float, clip_base: float, rate: float) -> jnp.ndarray:
    """Per-denoising-step PPO clip ``(K',)``: ``clip_base`` at j = 0 rising exponentially to ``clip`` at
    j = K'-1, ``c_j = c_base + (c - c_base) (e^{rate j/(K'-1)} - 1) / (e^rate - 1)``; linear when rate = 0."""
    if ft_steps < 1:
        raise ValueError(
            f"diwa_jax/finetune/ppo.py: ft_steps (config.policy.ft_denoising_steps) must be >= 1; got {ft_steps}")
    if ft_steps == 1:
        return jnp.full((1,), clip, jnp.float32)
    progress = jnp.arange(ft_steps, dtype=jnp.float32) / (ft_steps - 1)
    ramp = progress if rate == 0 else jnp.expm1(rate * progress) / jnp.expm1(rate)
    return clip_base + (clip - clip_base) * ramp


def denoising_discount(ft_steps: int, gamma_denoising: float) -> jnp.ndarray:
    """``(K',)`` advantage weights ``gamma_denoising^{K'-1-j}``: 1 for the final step, smaller for noisier ones."""
    return gamma_denoising ** jnp.arange(ft_steps - 1, -1, -1, dtype=jnp.float32)


def reduce_chain_logprob(logp, *, logprob_clamp=(-5.0, 2.0), logprob_reduce="mean"):
    """Per-element log-densities ``(..., Ta, A)`` -> one value per transition ``(...)``.

    DPPO quirk (spec section 9 row 7): clamp each element (``logprob_clamp=None`` disables it), then
    take the *mean* over the chunk (``logprob_reduce='sum'`` gives the true joint log-density)."""
    if logprob_clamp is not None:
        logp = jnp.clip(logp, *logprob_clamp)
    if logprob_reduce == "mean":
        return logp.mean(axis=(-2, -1))
    if logprob_reduce == "sum":
        return logp.sum(axis=(-2, -1))
    raise ValueError(
        "diwa_jax/finetune/ppo.py: logprob_reduce (config.ppo.logprob_reduce) must be 'mean' or 'sum'; "
        f"got {logprob_reduce!r}")


def normalize_advantages(advantages):
    return (advantages - advantages.mean()) / (advantages.std() + ADV_NORM_EPS)


def ppo_actor_loss_rows(new_logp, old_logp, advantages, denoising_index, clip_coefs, denoise_discount, *,
                        logprob_clamp=(-5.0, 2.0), logprob_reduce="mean", norm_adv=True):
    """Clipped-surrogate loss over ``R`` rows, each one denoising transition of one sample.

    Args:
      new_logp: ``(R, Ta, A)`` per-element log-probs under the current policy (differentiated).
      old_logp: ``(R, Ta, A)`` the same under the rollout policy (treated as constant).
      advantages: ``(R,)`` the GAE advantage of each row's sample.
      denoising_index: ``(R,)`` int, the row's j in ``0..K'-1``.
      clip_coefs, denoise_discount: ``(K',)`` tables from ``clip_schedule`` / ``denoising_discount``.
    Returns:
      ``(loss, metrics)``: ``loss = mean max(-A r, -A clip(r, 1-c_j, 1+c_j))`` with ``A`` normalised
      (if ``norm_adv``) then times ``denoise_discount[j]``; metrics ``approx_kl = mean((r-1) - log r)``,
      ``clipfrac = mean(|r-1| > c_j)`` and ratio mean/min/max.
    """
    rows = advantages.shape[0]
    if (advantages.shape != (rows,) or denoising_index.shape != (rows,) or new_logp.shape != old_logp.shape
            or new_logp.ndim != 3 or new_logp.shape[0] != rows):
        raise ValueError(
            "diwa_jax/finetune/ppo.py: ppo_actor_loss_rows expects new_logp/old_logp (R, Ta, A) and "
            f"advantages/denoising_index (R,); got {new_logp.shape}, {old_logp.shape}, {advantages.shape}, "
            f"{denoising_index.shape}")
    reduce = dict(logprob_clamp=logprob_clamp, logprob_reduce=logprob_reduce)
    old = jax.lax.stop_gradient(reduce_chain_logprob(old_logp, **reduce))
    log_ratio = reduce_chain_logprob(new_logp, **reduce) - old
    ratio = jnp.exp(log_ratio)
    advantages = jax.lax.stop_gradient(advantages)
    if norm_adv:
        advantages = normalize_advantages(advantages)
    advantages = advantages * jnp.asarray(denoise_discount)[denoising_index]
    clip = jnp.asarray(clip_coefs)[denoising_index]
    surrogate = -advantages * ratio
    clipped_surrogate = -advantages * jnp.clip(ratio, 1.0 - clip, 1.0 + clip)
    loss = jnp.maximum(surrogate, clipped_surrogate).mean()
    ratio, log_ratio = jax.lax.stop_gradient(ratio), jax.lax.stop_gradient(log_ratio)
    metrics = {
        "pg_loss": jax.lax.stop_gradient(loss),
        "approx_kl": ((ratio - 1.0) - log_ratio).mean(),
        "clipfrac": (jnp.abs(ratio - 1.0) > clip).astype(jnp.float32).mean(),
        "ratio_mean": ratio.mean(),
        "ratio_min": ratio.min(),
        "ratio_max": ratio.max(),
    }
    return loss, metrics


def ppo_actor_loss(new_logp, old_logp, advantages, clip_coefs, denoise_discount, **options):
    """``minibatch_mode='sample'``: ``new_logp, old_logp (B, K', Ta, A)``, ``advantages (B,)``; every sample
    contributes all its K' denoising steps. Same options and outputs as ``ppo_actor_loss_rows``."""
    batch, ft_steps = new_logp.shape[:2] if new_logp.ndim == 4 else (None, None)
    if batch is None or advantages.shape != (batch,) or clip_coefs.shape != (ft_steps,):
        raise ValueError(
            "diwa_jax/finetune/ppo.py: ppo_actor_loss expects new_logp (B, K', Ta, A), advantages (B,) and "
            f"clip_coefs (K',); got {new_logp.shape}, {advantages.shape}, {clip_coefs.shape}")
    as_rows = lambda x: x.reshape(batch * ft_steps, *x.shape[2:])
    return ppo_actor_loss_rows(
        as_rows(new_logp), as_rows(old_logp), jnp.repeat(advantages, ft_steps),
        jnp.tile(jnp.arange(ft_steps), batch), clip_coefs, denoise_discount, **options)


def value_loss(values, returns):
    """``0.5 * mean((V - R)^2)``, no value clipping."""
    return 0.5 * jnp.mean(jnp.square(values - jax.lax.stop_gradient(returns)))


def bc_loss(ft_logp_of_pretrained_chains, **reduce_options):
    """BC regulariser (spec section 6.2): minus the mean log-prob, under the fine-tuned policy, of chains
    ``(B, K', Ta, A)`` sampled by the frozen pretrained policy, reduced like the PPO log-probs."""
    return -reduce_chain_logprob(ft_logp_of_pretrained_chains, **reduce_options).mean()


def total_loss(pg_loss, v_loss, bc, vf_coef, alpha_bc):
    """``L = L_pg + vf_coef * L_v + alpha_bc * L_bc``."""
    return pg_loss + vf_coef * v_loss + alpha_bc * bc


def minibatch_indices(key, n_rows: int, batch_size: int) -> jnp.ndarray:
    """A shuffled split of ``range(n_rows)`` into ``(n_minibatches, size)`` index blocks.

    As DPPO: ``max(1, n_rows // batch_size)`` minibatches of ``min(batch_size, n_rows)`` rows; a remainder
    is left out of this epoch (a batch larger than the data gives one full-batch step)."""
    size = min(batch_size, n_rows)
    count = max(1, n_rows // batch_size)
    return jax.random.permutation(key, n_rows)[: count * size].reshape(count, size)
