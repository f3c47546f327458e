"""The static specs of the models, built from the experiment config in one place."""
from __future__ import annotations

from diwa_jax.policy.schedule import DDPMSchedule, make_schedule
from diwa_jax.world_model import model


def world_model_spec(config) -> model.WorldModelSpec:
    """The world model's spec: ``config.wm`` with the input sizes the data set's preprocessing gives."""
    return model.as_spec(config.wm, image_size=config.data.image_size, proprio_dim=config.derived.proprio_dim,
                         state_dim=config.derived.state_dim, action_dim=config.policy.action_dim)


def policy_schedule(config) -> DDPMSchedule:
    return make_schedule(config.policy.denoising_steps, config.policy.cosine_s)
