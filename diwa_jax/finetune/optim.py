"""Optimisers of the PPO stage (spec section 6.1 "Optimisers"): separate actor and critic AdamW.

Critic warm-up: while ``iteration < critic_warmup`` the actor is not stepped at all, as in DPPO where its
optimiser's ``step()`` is skipped. The actor optimiser is wrapped in ``optax.conditionally_mask`` with the
iteration as an extra argument, so under ``jit`` the gate is a ``lax.cond`` on a traced value: masked
steps give zero updates and leave the AdamW state (moments, step count) untouched, so the first real
actor step is AdamW's first step. Scaling the update by a 0/1 factor instead would let the moments
absorb the warm-up gradients.

Usage: ``updates, state = actor_tx.update(grads, state, params, iteration=itr)``; the critic's
``update`` takes the usual arguments.
"""
import optax


def actor_optimizer(lr: float, max_grad_norm: float, critic_warmup: int) -> optax.GradientTransformationExtraArgs:
    """AdamW(lr, wd 0) on the fine-tuned denoiser, after a global-norm clip when ``max_grad_norm > 0``,
    masked to zero while ``iteration < critic_warmup``."""
    adamw = optax.adamw(lr, weight_decay=0.0)
    inner = optax.chain(optax.clip_by_global_norm(max_grad_norm), adamw) if max_grad_norm > 0 else adamw
    return optax.conditionally_mask(
        inner, lambda step, iteration: iteration >= critic_warmup, forward_extra_args=True)


def critic_optimizer(lr: float) -> optax.GradientTransformation:
    """AdamW(lr, wd 0), constant learning rate."""
    return optax.adamw(lr, weight_decay=0.0)
