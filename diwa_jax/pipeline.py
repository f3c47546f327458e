"""The stages of a run, in order, each skipped when its artifact is complete.

A stage writes its outputs under ``<workdir>/<stage>/`` and, last, a ``COMPLETE.json`` marker holding
the config sections it depends on. A rerun skips a stage whose marker matches the current config,
refuses (naming the keys) one whose marker was written under a different config, and otherwise runs
it; the stage itself resumes from its own checkpoints.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Sequence

from diwa_jax.artifacts import STAGE_MARKER as MARKER
from diwa_jax.artifacts import stage_dir
from diwa_jax.atomic import write_json
from diwa_jax.config import ConfigError, sections
from diwa_jax.logging import info
from diwa_jax.stages import collect, evaluate, featurize, finetune, policy, reward, world_model


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    depends_on: tuple[str, ...]  # config sections or dotted keys whose values shape the artifact
    runner: Callable[..., dict]  # (config) -> summary


_COLLECT = ("seed", "collect", "env.static_size", "env.gripper_size", "env.renderer")
_DATA = _COLLECT + ("data.path", "data.image_size", "data.rot6d")  # what the data set and its cache depend on

STAGES: tuple[Stage, ...] = (
    Stage("collect", "scripted play and expert demos in the embedded play-table",
          _COLLECT, collect.collect),
    Stage("world_model", "train the RSSM on play sequences",
          _DATA + ("wm",), world_model.train_world_model),
    Stage("featurize", "the trained RSSM as a filter over every frame",
          _DATA + ("wm", "featurize"), featurize.featurize),
    Stage("policy", "BC-train the diffusion policy per task",
          _DATA + ("tasks", "wm", "featurize", "policy"), policy.train_policies),
    Stage("reward", "train the latent success classifier per task",
          _DATA + ("tasks", "wm", "featurize", "reward"), reward.train_rewards),
    Stage("finetune", "PPO on the Dream Diffusion MDP, all in imagination",
          _DATA + ("tasks", "wm", "featurize", "policy", "reward", "ppo", "eval", "env"),
          finetune.finetune),
    Stage("evaluate", "closed-loop evaluation: pre-trained vs fine-tuned",
          _DATA + ("tasks", "wm", "featurize", "policy", "reward", "ppo", "eval", "env"),
          evaluate.evaluate_stage),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def _marker_path(config, stage: Stage) -> str:
    return os.path.join(stage_dir(config, stage.name), MARKER)


def _dependencies(config, stage: Stage) -> dict:
    return json.loads(json.dumps(sections(config, stage.depends_on)))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def is_complete(config, stage: Stage) -> bool:
    """True if the marker matches the config; ConfigError if it was made under another config."""
    path = _marker_path(config, stage)
    if not os.path.exists(path):
        return False
    with open(path) as f:
        recorded = json.load(f)["config"]
    now = _flatten(_dependencies(config, stage))
    before = _flatten(recorded)
    changed = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
    if changed:
        raise ConfigError(
            f"stage '{stage.name}' in {config.derived.workdir} was made with different values of "
            f"{', '.join('config.' + k for k in changed[:6])}{' ...' if len(changed) > 6 else ''}; "
            "use a new --workdir, or delete that stage's folder to redo it")
    return True


def mark_complete(config, stage: Stage, summary: dict | None = None) -> None:
    write_json(_marker_path(config, stage), {"stage": stage.name, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                                             "config": _dependencies(config, stage), "summary": summary or {}})


def select(names: Sequence[str] | None) -> tuple[Stage, ...]:
    if not names:
        return STAGES
    unknown = [n for n in names if n not in STAGE_NAMES]
    if unknown:
        raise ConfigError(f"--stages: unknown stage(s) {unknown}; stages are {', '.join(STAGE_NAMES)}")
    return tuple(s for s in STAGES if s.name in names)


def run(config, names: Sequence[str] | None = None) -> None:
    for stage in select(names):
        if stage.name == "collect" and not config.derived.collect_data:
            info(f"[collect] skipped: using the data set at {config.derived.data_dir}")
            continue
        if is_complete(config, stage):
            info(f"[{stage.name}] complete, skipping ({_marker_path(config, stage)})")
            continue
        info(f"[{stage.name}] {stage.summary}")
        start = time.time()
        summary = stage.runner(config) or {}
        summary["wall_time_s"] = round(time.time() - start, 1)
        mark_complete(config, stage, summary)
        info(f"[{stage.name}] done in {summary['wall_time_s']:.1f} s")
