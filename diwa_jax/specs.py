"""The static specs of the models, built from the experiment config in one place."""
from __future__ import annotations

from diwa_jax.data.preprocess import proprio_dim, scene_state_dim
from diwa_jax.policy.schedule import DDPMSchedule, make_schedule
from diwa_jax.world_model import model


def world_model_spec(config) -> model.WorldModelSpec:
    """The world model's spec: ``config.wm`` with the input sizes the data set's preprocessing gives
    (``config.data``), the one every stage trains, restores and imagines with."""
    rot6d = config.data.rot6d
    return model.WorldModelSpec.from_config(
        config.wm, image_size=config.data.image_size, proprio_dim=proprio_dim(rot6d),
        state_dim=proprio_dim(rot6d) + scene_state_dim(rot6d), action_dim=config.policy.action_dim)


def policy_schedule(config) -> DDPMSchedule:
    return make_schedule(config.policy.denoising_steps, config.policy.cosine_s)
