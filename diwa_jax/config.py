"""Validation and derived values of an experiment config, in one place.

``finalize(config, workdir)`` checks every value, fills ``config.derived`` (values that follow from
others, recomputed after command-line overrides) and returns a locked, frozen copy. Errors are one
line naming the key: ``config.ppo.actor_lr: must be > 0 (got -1.0)``.
"""
from __future__ import annotations

import itertools
import json
import math
import os
from typing import Any, Callable

import ml_collections

from diwa_jax.data.preprocess import proprio_dim, scene_state_dim
from diwa_jax.envs import tasks as task_registry
from diwa_jax.errors import ConfigError


# Numbers must be finite: an inf learning rate or step count is never meant (it would train to NaN or forever),
# and an int must fit in the int64 of the arrays and JAX keys that take it.
def _finite(x) -> bool:
    return abs(x) < 2**63 if isinstance(x, int) else math.isfinite(x)


def _positive(x) -> bool:
    return _finite(x) and x > 0


def _non_negative(x) -> bool:
    return _finite(x) and x >= 0


def _unit(x) -> bool:
    return 0.0 <= x <= 1.0


def _at_most_256(x) -> bool:
    """must be in [1, 256] (featurize stores class indices as uint8)"""
    return 0 < x <= 256


def _even_at_least_4(x) -> bool:
    """must be even and >= 4 (the sinusoidal time embedding has sin and cos halves)"""
    return x >= 4 and x % 2 == 0


def _at_least_2(x) -> bool:
    """must be >= 2 (the contrastive loss needs another sample in the batch)"""
    return x >= 2


def _one_of(*choices) -> Callable[[Any], bool]:
    check = lambda x: x in choices  # noqa: E731
    check.__doc__ = f"must be one of {', '.join(map(repr, choices))}"
    return check


_DESCRIBE = {_positive: "must be finite and > 0", _non_negative: "must be finite and >= 0", _finite: "must be finite",
             _unit: "must be in [0, 1]"}

# key -> predicate: every number of the config has one (tests/test_config.py checks); the other keys absent
# here are type-checked by ml_collections (and paths by the stage that reads them).
_RULES: dict[str, Callable[[Any], bool]] = {
    "seed": _non_negative,
    "seeds": _positive,
    "data.image_size": _one_of(64),
    "data.cache_workers": _positive,
    "data.cache_chunk_frames": _positive,
    "env.backend": _one_of("playtable", "calvin_env"),
    "env.static_size": _positive,
    "env.gripper_size": _positive,
    "env.renderer": _one_of("tiny", "egl"),
    "collect.train_frames": _positive,
    "collect.val_frames": _positive,
    "collect.segment_frames": _positive,
    "collect.workers": _positive,
    "collect.skill_noise": _unit,
    "collect.failure_prob": _unit,
    "collect.window": _positive,
    "collect.post_completion_frames": _non_negative,
    "wm.variant": _one_of("vision", "hybrid", "state"),
    "wm.cnn_depth": _positive,
    "wm.deter": _positive,
    "wm.stoch": _positive,
    "wm.classes": _at_most_256,
    "wm.hidden": _positive,
    "wm.state_hidden": _positive,
    "wm.state_embed": _positive,
    "wm.ln_eps": _positive,
    "wm.temperature": _positive,
    "wm.kl_balance": _unit,
    "wm.kl_weight": _non_negative,
    "wm.free_nats": _non_negative,
    "wm.image_weight": _non_negative,
    "wm.state_weight": _non_negative,
    "wm.inverse_dynamics_weight": _non_negative,
    "wm.inverse_dynamics_hidden": _positive,
    "wm.lr": _positive,
    "wm.adam_eps": _positive,
    "wm.weight_decay": _non_negative,
    "wm.clip_norm": _positive,
    "wm.batch_size": _positive,
    "wm.seq_len": _positive,
    "wm.steps": _positive,
    "wm.reset_prob": _unit,
    "wm.log_every": _positive,
    "wm.image_every": _positive,
    "wm.ckpt_every": _positive,
    "wm.openloop_context": _positive,
    "wm.openloop_horizon": _positive,
    "featurize.chunk_frames": _positive,
    "featurize.batch_streams": _positive,
    "policy.horizon": _positive,
    "policy.act_steps": _positive,
    "policy.action_dim": _one_of(7),
    "policy.denoising_steps": _positive,
    "policy.ft_denoising_steps": _positive,
    "policy.time_dim": _even_at_least_4,
    "policy.mlp_dim": _positive,
    "policy.cosine_s": _positive,
    "policy.denoised_clip": _positive,
    "policy.bc_randn_clip": _positive,
    "policy.deterministic_min_std": _non_negative,
    "policy.n_train_windows": _positive,
    "policy.window_seed": _non_negative,
    "policy.lr": _positive,
    "policy.min_lr": _non_negative,
    "policy.weight_decay": _non_negative,
    "policy.batch_size": _positive,
    "policy.epochs": _positive,
    "policy.warmup_epochs": _non_negative,
    "policy.cosine_epochs": _positive,
    "policy.ema_decay": _unit,
    "policy.ema_every": _positive,
    "policy.ema_start": _non_negative,
    "policy.ckpt_every": _positive,
    "reward.embed_hidden": _positive,
    "reward.embed_dim": _positive,
    "reward.head_hidden": _positive,
    "reward.tau": _positive,
    "reward.ce_weight": _non_negative,
    "reward.lr": _positive,
    "reward.batch_size": _at_least_2,
    "reward.epochs": _positive,
    "reward.negatives_per_episode": _positive,
    "reward.hard_negatives": _non_negative,
    "reward.n_train_windows": _positive,
    "reward.other_task_windows": _non_negative,
    "reward.window_seed": _non_negative,
    "reward.eval_every": _positive,
    "ppo.n_envs": _positive,
    "ppo.n_steps": _positive,
    "ppo.episode_len": _positive,
    "ppo.iterations": _positive,
    "ppo.eval_every": _positive,
    "ppo.critic_warmup": _non_negative,
    "ppo.gamma": _unit,
    "ppo.gae_lambda": _unit,
    "ppo.gamma_denoising": _unit,
    "ppo.update_epochs": _positive,
    "ppo.batch_size": _positive,
    "ppo.minibatch_mode": _one_of("sample", "denoising_step"),
    "ppo.clip": _positive,
    "ppo.clip_base": _positive,
    "ppo.clip_rate": _positive,
    "ppo.vf_coef": _non_negative,
    "ppo.target_kl": _positive,
    "ppo.max_grad_norm": _non_negative,
    "ppo.actor_lr": _positive,
    "ppo.critic_lr": _positive,
    "ppo.critic_dim": _positive,
    "ppo.min_sampling_std": _non_negative,
    "ppo.min_logprob_std": _positive,
    "ppo.logprob_reduce": _one_of("mean", "sum"),
    "ppo.randn_clip": _positive,
    "ppo.logprob_min": _finite,
    "ppo.logprob_max": _finite,
    "ppo.reward_scale_gamma": _unit,
    "ppo.reward_scale_clip": _positive,
    "ppo.reward_mode": _one_of("binary", "probability"),
    "ppo.success_hold": _positive,
    "ppo.reward_source": _one_of("classifier", "decoded_state"),
    "ppo.alpha_bc": _non_negative,
    "ppo.start_source": _one_of("simulator", "dataset"),
    "ppo.devices": _non_negative,
    "ppo.n_start_states": _positive,
    "ppo.transfer_starts": _non_negative,
    "ppo.ckpt_every": _positive,
    "eval.max_steps": _positive,
    "eval.start_source": _one_of("simulator", "validation"),
    "eval.episodes": _non_negative,
    "eval.periodic_episodes": _positive,
    "eval.start_seed": _non_negative,
    "eval.envs": _positive,
    "eval.workers": _non_negative,
    "online.init": _one_of("pretrained", "finetuned"),
    "online.envs": _positive,
    "online.workers": _non_negative,
    "online.iterations": _positive,
    "online.eval_every": _positive,
    "online.ckpt_every": _positive,
}

# Keys that change what is logged, how often state is saved or how work is spread over processes, never
# what a stage computes (a resumed run ends with the numbers of an uninterrupted one, whatever the
# checkpoint interval; an evaluation episode's numbers do not depend on how many simulators run at once or
# in how many processes).
COSMETIC = ("collect.workers", "wm.log_every", "wm.image_every", "wm.ckpt_every", "policy.ckpt_every",
            "ppo.ckpt_every", "eval.envs", "eval.workers", "online.workers", "online.ckpt_every")

# Relations between keys: (keys named in the error, predicate on the config, message).
_RELATIONS = (
    ("policy.ft_denoising_steps", lambda c: c.policy.ft_denoising_steps <= c.policy.denoising_steps,
     "must be <= config.policy.denoising_steps"),
    ("policy.act_steps", lambda c: c.policy.act_steps <= c.policy.horizon, "must be <= config.policy.horizon"),
    ("policy.min_lr", lambda c: c.policy.min_lr <= c.policy.lr, "must be <= config.policy.lr"),
    ("policy.cosine_epochs", lambda c: c.policy.cosine_epochs > c.policy.warmup_epochs,
     "must exceed config.policy.warmup_epochs (the cosine cycle includes the warm-up)"),
    ("ppo.episode_len", lambda c: c.ppo.episode_len % c.policy.act_steps == 0,
     "must be a multiple of config.policy.act_steps"),
    ("ppo.success_hold", lambda c: c.ppo.success_hold <= c.policy.act_steps,
     "must be <= config.policy.act_steps (the classifier judges the latents of one chunk)"),
    ("ppo.reward_source", lambda c: c.ppo.reward_source != "decoded_state" or c.wm.variant in ("hybrid", "state"),
     "decoded_state needs config.wm.variant hybrid or state (a world model with a state head)"),
    ("ppo.transfer_starts", lambda c: c.ppo.transfer_starts <= c.ppo.n_start_states,
     "must be <= config.ppo.n_start_states (the diagnostic runs on the start pool's first states)"),
    ("ppo.clip_base", lambda c: c.ppo.clip_base <= c.ppo.clip, "must be <= config.ppo.clip"),
    ("ppo.logprob_min", lambda c: c.ppo.logprob_min < c.ppo.logprob_max, "must be < config.ppo.logprob_max"),
    ("eval.episodes", lambda c: c.eval.episodes > 0 or c.eval.start_source == "validation",
     "must be > 0 with config.eval.start_source='simulator' (0 means every validation window)"),
    ("eval.workers", lambda c: c.eval.workers <= c.eval.envs, "must be <= config.eval.envs (each worker runs >= 1 simulator)"),
    ("online.workers", lambda c: c.online.workers <= c.online.envs,
     "must be <= config.online.envs (each worker runs >= 1 simulator)"),
    ("online.tasks", lambda c: set(c.online.tasks) <= set(c.tasks), "must be tasks of config.tasks"),
    ("wm.openloop_context", lambda c: c.wm.openloop_context + c.wm.openloop_horizon <= c.wm.seq_len
     or c.wm.openloop_context + c.wm.openloop_horizon <= c.collect.segment_frames,
     "context + horizon must fit in a recorded segment (config.collect.segment_frames)"),
)


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def validate(config: ml_collections.ConfigDict) -> None:
    for key, rule in _RULES.items():
        try:
            value = _get(config, key)
        except KeyError:
            raise ConfigError(f"config.{key}: missing from the config file") from None
        if not rule(value):
            what = _DESCRIBE.get(rule) or rule.__doc__
            raise ConfigError(f"config.{key}: {what} (got {value!r})")
    tasks = tuple(config.tasks)
    unknown = [t for t in tasks if t not in task_registry.names()]
    if not tasks or unknown:
        raise ConfigError(f"config.tasks: unknown task(s) {unknown} (choose from {', '.join(task_registry.names())}, "
                          "or register a new one with diwa_jax.envs.tasks.register)")
    for key, holds, message in _RELATIONS:
        if not holds(config):
            raise ConfigError(f"config.{key}: {message} (got {_get(config, key)!r})")
    if parse_alpha_bc_by_task(config) and len(config.sweep.alpha_bc):
        raise ConfigError("config.ppo.alpha_bc_by_task: set while config.sweep.alpha_bc sweeps alpha_BC; "
                          "clear one of them")
    for key in SWEPT:
        values = tuple(_get(config, key))
        if len(set(values)) != len(values):
            raise ConfigError(f"config.{key}: the swept values must differ (got {values!r})")
    points = sweep_points(config)
    if len(points) == 1:
        raise ConfigError(f"config.sweep: one run ({sweep_label(points[0])}) is no sweep; set the key itself instead")
    for point in points:
        try:
            validate(point_config(config, point))
        except (ConfigError, TypeError) as e:  # TypeError: a value of another type than the key's
            raise ConfigError(f"config.sweep: its run {sweep_label(point)} is invalid: {e}") from None


def parse_alpha_bc_by_task(config) -> dict[str, float]:
    """``config.ppo.alpha_bc_by_task`` ("TASK=VALUE,...") as ``{task: value}``; raises ConfigError naming it."""
    key, text, out = "config.ppo.alpha_bc_by_task", config.ppo.alpha_bc_by_task, {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        task, equals, value = (x.strip() for x in item.partition("="))
        try:
            number = float(value) if equals else None
        except ValueError:
            number = None
        if number is None or not _non_negative(number):
            raise ConfigError(f"{key}: {item!r} is not TASK=VALUE with a finite VALUE >= 0 (got {text!r})")
        if task not in config.tasks:
            raise ConfigError(f"{key}: {task!r} is not a task of config.tasks ({', '.join(config.tasks)})")
        if task in out:
            raise ConfigError(f"{key}: {task!r} is named twice (got {text!r})")
        out[task] = number
    return out


def alpha_bc(config, task: str) -> float:
    """``task``'s alpha_BC: its ``config.ppo.alpha_bc_by_task`` value, else ``config.ppo.alpha_bc``."""
    return parse_alpha_bc_by_task(config).get(task, config.ppo.alpha_bc)


# sweep key -> the key whose values it lists (experiments/ablation.py; diwa_jax/sweep.py runs them)
SWEPT = {"sweep.alpha_bc": "ppo.alpha_bc", "sweep.reward_source": "ppo.reward_source"}


def sweep_points(config) -> list[dict[str, Any]]:
    """The sweep's grid, one ``{dotted key: value}`` per run (the first swept key varies slowest); [] if none."""
    axes = [(SWEPT[key], tuple(_get(config, key))) for key in SWEPT if len(_get(config, key))]
    return [dict(zip([target for target, _ in axes], values))
            for values in itertools.product(*[values for _, values in axes])] if axes else []


def sweep_label(point: dict[str, Any]) -> str:
    """A point's name, e.g. ``alpha_bc=0.1,reward_source=classifier`` (also its folder's name)."""
    return ",".join(f"{key.rpartition('.')[2]}={value}" for key, value in point.items())


def point_config(config, point: dict[str, Any]) -> ml_collections.ConfigDict:
    """The plain run of one point: ``config`` with the point's values set and nothing swept."""
    plain = config.to_dict()
    plain.pop("derived", None)
    out = ml_collections.ConfigDict(plain)
    for key, value in point.items():
        section, _, name = key.rpartition(".")
        out[section][name] = value
    for key in SWEPT:
        out.sweep[key.rpartition(".")[2]] = ()
    return out


def derive(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """Values that follow from others. The only place they are computed."""
    d = ml_collections.ConfigDict()
    workdir = os.path.abspath(workdir)
    d.workdir = workdir
    d.data_dir = os.path.abspath(config.data.path) if config.data.path else os.path.join(workdir, "collect", "data")
    d.cache_dir = os.path.abspath(config.data.cache_dir) if config.data.cache_dir else os.path.join(workdir, "cache")
    d.collect_data = not config.data.path
    d.latent_dim = config.wm.deter + config.wm.stoch * config.wm.classes
    d.proprio_dim = proprio_dim(config.data.rot6d)
    d.scene_state_dim = scene_state_dim(config.data.rot6d)
    d.state_dim = d.proprio_dim + d.scene_state_dim
    d.chunk_dim = config.policy.horizon * config.policy.action_dim
    d.episode_chunks = config.ppo.episode_len // config.policy.act_steps
    d.samples_per_iteration = config.ppo.n_envs * config.ppo.n_steps
    d.ppo_minibatches = max(1, math.ceil(d.samples_per_iteration / config.ppo.batch_size))
    d.wm_steps_per_iteration = d.samples_per_iteration * config.policy.act_steps
    d.online_tasks = tuple(config.online.tasks) or tuple(config.tasks)
    d.online_max_sim_steps_per_iteration = config.online.envs * config.ppo.n_steps * config.policy.act_steps
    return d


def finalize(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.FrozenConfigDict:
    """Validate, derive, and freeze. Raises ConfigError naming the first bad key."""
    validate(config)
    out = ml_collections.ConfigDict(config.to_dict())
    out.derived = derive(config, workdir)
    return ml_collections.FrozenConfigDict(out)


def to_json(config: ml_collections.ConfigDict | ml_collections.FrozenConfigDict) -> str:
    return json.dumps(_plain(config), indent=2, sort_keys=True)


def _plain(x: Any) -> Any:
    if isinstance(x, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict, dict)):
        return {k: _plain(v) for k, v in (x.items() if isinstance(x, dict) else x.items())}
    if isinstance(x, (tuple, list)):
        return [_plain(v) for v in x]
    return x


def sections(config, names: tuple[str, ...]) -> dict:
    """The plain-dict view of some sections or single (dotted) keys: what a stage's artifact depends on."""
    return {n: _plain(_get(config, n)) for n in names}


def preset_defaults(preset: str) -> ml_collections.ConfigDict:
    """The experiment file's ``preset`` before any override: the values of keys a saved run predates (a
    key is added with the default that keeps what came before it)."""
    from experiments.calvin import get_config

    return get_config(preset)


def stage_key(config, purpose: str):
    """The typed PRNG key of one purpose (a stage, a task), derived from ``config.seed`` alone, so
    the same seed gives the same numbers whatever ran before."""
    import zlib

    import jax
    return jax.random.fold_in(jax.random.key(config.seed), zlib.crc32(purpose.encode()) & 0x7FFFFFFF)
