"""The stages of a run, in order, each skipped when its artifact is complete.

A stage writes its outputs under ``<workdir>/<stage>/``: first a ``STARTED.json`` marker holding its
fingerprint, last a ``COMPLETE.json`` marker holding it again. The fingerprint is the stage's own
artifact-shaping config keys (logging-only keys left out) plus its parents' fingerprints, so a change
upstream reaches every stage made from it and a cosmetic change reaches none.

Before anything is written, ``run`` checks the whole workdir: every stage with a marker (complete or
in progress) whose fingerprint differs from the current config is refused, naming every differing
key and the folders whose deletion redoes those stages from scratch; stages asked for whose inputs
are missing, a workdir that is a file or read-only, a data set path that is not a data set root and
more devices than JAX sees are refused too. Only then is ``<workdir>/config.json`` written and the
stages run; each resumes from its own checkpoints.

One exception to the refusal: a stage that stopped because training diverged (``DIVERGED.json``) may
be rerun with other values of its optimiser keys (``Stage.retunable``, e.g. a lower ``wm.lr``); it
resumes from its last finite checkpoint (none is ever saved past a non-finite value), and its markers
record the steps made under the old values.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from typing import Callable, Sequence

from diwa_jax.artifacts import STAGE_MARKER as MARKER
from diwa_jax.artifacts import data_simulator, stage_dir
from diwa_jax.atomic import write_json, write_text
from diwa_jax.config import COSMETIC, ConfigError, preset_defaults, sections, to_json
from diwa_jax.logging import info
from diwa_jax.errors import TrainingDiverged
from diwa_jax.stages import collect, evaluate, featurize, finetune, online, policy, reward, world_model

STARTED = "STARTED.json"
DIVERGED = "DIVERGED.json"
RESOLVED_CONFIG = "config.json"


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    depends_on: tuple[str, ...]  # its own config sections or dotted keys whose values shape the artifact
    parents: tuple[str, ...]  # stages whose artifacts it reads (their fingerprints are part of its own)
    runner: Callable[..., dict]  # (config) -> summary
    retunable: tuple[str, ...] = ()  # keys that may change after a divergence (resume from the last finite state)
    default: bool = True  # run without --stages (an optional stage runs only when named)


STAGES: tuple[Stage, ...] = (
    Stage("collect", "scripted play and expert demos in the simulator of config.env.backend",
          ("seed", "collect", "env.static_size", "env.gripper_size", "env.renderer"), (),
          collect.collect),
    Stage("world_model", "train the RSSM on play sequences",
          ("seed", "data.path", "data.image_size", "data.rot6d", "wm"), ("collect",),
          world_model.train_world_model,
          retunable=("wm.lr", "wm.adam_eps", "wm.clip_norm", "wm.weight_decay")),
    Stage("featurize", "the trained RSSM as a filter over every frame",
          ("featurize",), ("world_model",), featurize.featurize),
    Stage("policy", "BC-train the diffusion policy per task",
          ("tasks", "policy"), ("featurize",), policy.train_policies,
          retunable=("policy.lr", "policy.min_lr", "policy.weight_decay")),
    Stage("reward", "train the latent success classifier per task",
          ("tasks", "reward"), ("featurize",), reward.train_rewards,
          retunable=("reward.lr",)),
    Stage("finetune", "PPO on the Dream Diffusion MDP, all in imagination",
          ("tasks", "seeds", "ppo", "eval.max_steps", "eval.deterministic", "eval.filter_every_frame",
           "eval.start_source", "eval.start_seed", "eval.periodic_episodes", "env"), ("policy", "reward"),
          finetune.finetune,
          retunable=("ppo.actor_lr", "ppo.critic_lr", "ppo.max_grad_norm")),
    Stage("evaluate", "closed-loop evaluation: pre-trained vs fine-tuned",
          ("tasks", "eval", "env"), ("finetune",), evaluate.evaluate_stage),
    Stage("online", "the online DPPO baseline: fine-tuning in the simulator, every step counted",
          ("online", "tasks", "seeds", "ppo", "eval.max_steps", "eval.deterministic", "eval.filter_every_frame",
           "eval.start_source", "eval.start_seed", "eval.periodic_episodes", "env"), ("finetune",),
          online.online, retunable=("ppo.actor_lr", "ppo.critic_lr", "ppo.max_grad_norm"), default=False),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
DEFAULT_STAGES = tuple(s for s in STAGES if s.default)  # what a run without --stages runs


def _stage(name: str) -> Stage:
    return next(s for s in STAGES if s.name == name)


def _marker_path(config, stage: Stage, marker: str = MARKER) -> str:
    return os.path.join(stage_dir(config, stage.name), marker)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _flat_sections(config, names: tuple[str, ...]) -> dict:
    """``{dotted key: JSON value}`` of some sections or keys of ``config``."""
    return _flatten(json.loads(json.dumps(sections(config, names))))


def fingerprint(config, stage: Stage) -> dict:
    """``{dotted key: value}``: the stage's own artifact-shaping keys and its parents' fingerprints."""
    if stage.name == "collect" and not config.derived.collect_data:
        return {}  # the data set comes from config.data.path, which the world model's fingerprint holds
    own = _flat_sections(config, stage.depends_on)
    out = {k: v for k, v in own.items() if k not in COSMETIC}
    for parent in stage.parents:
        out.update(fingerprint(config, _stage(parent)))
    return dict(sorted(out.items()))


def _read(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: unreadable stage marker ({e}); delete its stage folder to redo the stage") from e


def _recorded(config, stage: Stage) -> dict | None:
    """The fingerprint a stage's artifact was (or is being) made under; None for a stage never started."""
    marker = _read(_marker_path(config, stage)) or _read(_marker_path(config, stage, STARTED))
    if marker is None:
        return None
    if "fingerprint" not in marker:
        raise ConfigError(f"{_marker_path(config, stage)}: marker of an older version of diwa-jax (no fingerprint); "
                          f"delete {stage_dir(config, stage.name)} to redo the stage")
    return marker["fingerprint"]


def changed_keys(config, stage: Stage) -> list[str]:
    """Keys whose values differ from those the stage's artifact was made under ([] if none or never started).
    A key added to diwa-jax after the artifact was made counts as unchanged while it keeps its preset's
    default (the value that keeps the behaviour the artifact was made with)."""
    before = _recorded(config, stage)
    if before is None:
        return []
    now = fingerprint(config, stage)
    added = set(now) - set(before)
    if added:
        defaults = _flat_sections(preset_defaults(config.preset), tuple({k.partition(".")[0] for k in added}))
        before = {**{k: defaults.get(k, "<absent>") for k in added}, **before}
    return sorted(k for k in set(now) | set(before) if now.get(k, "<absent>") != before.get(k, "<absent>"))


def _resumable_after_divergence(config, stage: Stage, changed: list[str]) -> bool:
    return (os.path.exists(_marker_path(config, stage, DIVERGED)) and not os.path.exists(_marker_path(config, stage))
            and all(k in stage.retunable for k in changed))


def check_workdir(config) -> dict[str, list[str]]:
    """Refuse (ConfigError) a workdir holding stages made under other config values, naming every
    differing key, the stages and the folders to delete. Returns the diverged stages that may resume
    under retuned optimiser values: ``{stage: changed keys}``."""
    refused, retuned = {}, {}
    for stage in STAGES:
        changed = changed_keys(config, stage)
        if changed and _resumable_after_divergence(config, stage, changed):
            retuned[stage.name] = changed
        elif changed:
            refused[stage.name] = changed
    if refused:
        keys = sorted({k for changed in refused.values() for k in changed})
        folders = [stage_dir(config, name) for name in refused]
        raise ConfigError(
            f"{config.derived.workdir} was made with other values of {', '.join('config.' + k for k in keys)} "
            f"(stages {', '.join(refused)}); nothing was written. Use a new --workdir, or delete "
            f"{' '.join(folders)} to redo those stages from scratch")
    return retuned


def is_complete(config, stage: Stage) -> bool:
    """True if the stage's complete marker matches the config; ConfigError if it was made under another."""
    if stage.name == "collect" and not config.derived.collect_data:
        return True
    if not os.path.exists(_marker_path(config, stage)):
        return False
    changed = changed_keys(config, stage)
    if changed:
        raise ConfigError(
            f"stage '{stage.name}' in {config.derived.workdir} was made with other values of "
            f"{', '.join('config.' + k for k in changed)}; use a new --workdir, or delete "
            f"{stage_dir(config, stage.name)} to redo it from scratch")
    return True


def mark_started(config, stage: Stage, retuned: list[str] = ()) -> None:
    """The START marker: the fingerprint the stage is made under (kept when a rerun resumes it).
    A diverged stage resumed under retuned values records the old values and the step it resumed at."""
    path = _marker_path(config, stage, STARTED)
    marker = _read(path)
    if marker is not None and not retuned:
        return
    now = fingerprint(config, stage)
    history = (marker or {}).get("history", [])
    if retuned:
        diverged = _read(_marker_path(config, stage, DIVERGED)) or {}
        history.append({"resumed_at_step": diverged.get("last_finite_step"),
                        "before": {k: marker["fingerprint"].get(k) for k in retuned},
                        "after": {k: now.get(k) for k in retuned}})
        os.remove(_marker_path(config, stage, DIVERGED))
    write_json(path, {"stage": stage.name, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "fingerprint": now,
                      "history": history})


def mark_complete(config, stage: Stage, summary: dict | None = None) -> None:
    started = _read(_marker_path(config, stage, STARTED)) or {}
    write_json(_marker_path(config, stage), {
        "stage": stage.name, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "fingerprint": fingerprint(config, stage),
        "history": started.get("history", []), "summary": summary or {}})


def mark_diverged(config, stage: Stage, error: Exception, last_finite_step: int | None) -> None:
    write_json(_marker_path(config, stage, DIVERGED), {"error": str(error), "last_finite_step": last_finite_step})


def select(names: Sequence[str] | None) -> tuple[Stage, ...]:
    if not names:
        return DEFAULT_STAGES
    unknown = [n for n in names if n not in STAGE_NAMES]
    if unknown:
        raise ConfigError(f"--stages: unknown stage(s) {unknown}; stages are {', '.join(STAGE_NAMES)}")
    return tuple(s for s in STAGES if s.name in names)


def _check_inputs(config, stages: tuple[Stage, ...]) -> None:
    """Every stage asked for reads only artifacts that are complete or made earlier in this run."""
    names = {s.name for s in stages}
    for stage in stages:
        missing = [p for p in stage.parents if p not in names and not is_complete(config, _stage(p))]
        if missing:
            raise ConfigError(
                f"--stages={','.join(s.name for s in stages)}: stage '{stage.name}' reads the output of "
                f"{', '.join(repr(m) for m in missing)}, which is not complete in {config.derived.workdir}; "
                f"add {','.join(missing)} to --stages or run without --stages")


def _check_data_path(config) -> None:
    if config.derived.collect_data:
        return
    root = config.derived.data_dir
    has_splits = lambda d: all(os.path.isdir(os.path.join(d, s)) for s in ("training", "validation"))  # noqa: E731
    if has_splits(root):
        return
    parent = os.path.dirname(root)
    if os.path.basename(root) in ("training", "validation") and has_splits(parent):
        raise ConfigError(f"config.data.path={config.data.path}: is a split folder; pass the data set root that "
                          f"holds training/ and validation/: --config.data.path={parent}")
    raise ConfigError(f"config.data.path={config.data.path}: no training/ and validation/ folders in {root}; "
                      "pass a CALVIN data set root such as .../task_D_D")


def _check_simulator(config) -> None:
    """One simulator per run: the data set's (``artifacts.data_simulator``) is the one fine-tuning and evaluation
    use, unless the user opts in."""
    recorded = data_simulator(config)
    if recorded is None or recorded["backend"] == config.env.backend or config.data.allow_simulator_mismatch:
        return
    raise ConfigError(
        f"{config.derived.data_dir}: the data set was recorded in {recorded['backend']} ({recorded['scene']}), but "
        f"config.env.backend={config.env.backend!r} would fine-tune and evaluate its models in another simulator; "
        f"use --config.env.backend={recorded['backend']} (or a new --workdir), or opt in with "
        "--config.data.allow_simulator_mismatch=True")


def _check_devices(config, stages: tuple[Stage, ...]) -> None:
    if [s for s in stages if s.name in ("finetune", "online") and not is_complete(config, s)]:
        finetune.learner_mesh(config)  # refuses more devices than JAX sees


def check_task_windows(config) -> None:
    """Every task needs annotation windows in both splits (training: BC and reward; validation: the
    evaluation episodes and the reward's validation); fewer training windows than the policy asks for
    is allowed, with a warning."""
    from diwa_jax.data.calvin_format import load_annotations
    counts = {}
    for split in ("training", "validation"):
        ann = load_annotations(os.path.join(config.derived.data_dir, split))
        counts[split] = {task: len(ann.task_windows(task)) for task in config.tasks}
    for task, n in counts["training"].items():
        if 0 < n < config.policy.n_train_windows:
            info(f"warning: task '{task}' has {n} training window(s), fewer than config.policy.n_train_windows="
                 f"{config.policy.n_train_windows}: the policy and the reward train on those {n}")
    for split, per_task in counts.items():
        empty = [t for t, n in per_task.items() if n == 0]
        if empty:
            raise ConfigError(
                f"config.tasks: no {split} annotation windows of {', '.join(empty)} in "
                f"{os.path.join(config.derived.data_dir, split)}; remove them from config.tasks or collect more data "
                f"(config.collect.{'train' if split == 'training' else 'val'}_frames)")


def _check_writable(config, stages: tuple[Stage, ...], resolved: str) -> None:
    workdir = config.derived.workdir
    if all(is_complete(config, s) for s in stages) and _read_text(os.path.join(workdir, RESOLVED_CONFIG)) == resolved:
        return  # nothing to write: a complete workdir may be read-only
    existing = workdir
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    try:  # a real write: permission bits say nothing for root or on a read-only file system
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as e:
        raise ConfigError(f"--workdir={workdir}: cannot write in {existing} ({e.strerror}); make it writable or use "
                          "another --workdir") from None


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def run(config, names: Sequence[str] | None = None) -> None:
    """Check the workdir against the config (nothing written before every check passed), save the
    resolved config as ``<workdir>/config.json``, then run the stages that are not complete."""
    stages = select(names)
    resolved = to_json(config)
    workdir = config.derived.workdir
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir={workdir}: is a file, not a folder; pass a folder (created if missing)")
    retuned = check_workdir(config)
    _check_inputs(config, stages)
    _check_data_path(config)
    _check_simulator(config)
    _check_devices(config, stages)
    _check_writable(config, stages, resolved)
    os.makedirs(config.derived.workdir, exist_ok=True)
    if _read_text(os.path.join(config.derived.workdir, RESOLVED_CONFIG)) != resolved:
        write_text(os.path.join(config.derived.workdir, RESOLVED_CONFIG), resolved)
    windows_checked = False
    for stage in stages:
        if stage.name == "collect" and not config.derived.collect_data:
            info(f"[collect] skipped: using the data set at {config.derived.data_dir}")
            continue
        if is_complete(config, stage):
            info(f"[{stage.name}] complete, skipping ({_marker_path(config, stage)})")
            continue
        if stage.name != "collect" and not windows_checked:
            check_task_windows(config)  # as soon as the data set exists, before any model is trained
            windows_checked = True
        if stage.name in retuned:
            info(f"[{stage.name}] resuming from its last finite checkpoint under new values of "
                 f"{', '.join('config.' + k for k in retuned[stage.name])}")
        mark_started(config, stage, retuned.get(stage.name, ()))
        info(f"[{stage.name}] {stage.summary}")
        start = time.time()
        try:
            summary = stage.runner(config) or {}
        except TrainingDiverged as e:
            mark_diverged(config, stage, e, e.last_finite_step)
            if stage.name in retuned:  # the last finite state is past saving: say how to start over
                raise TrainingDiverged(f"{e}. It diverged again after resuming under the new values: delete "
                                       f"{stage_dir(config, stage.name)} to train the stage from scratch",
                                       e.last_finite_step) from None
            raise
        summary["wall_time_s"] = round(time.time() - start, 1)
        mark_complete(config, stage, summary)
        info(f"[{stage.name}] done in {summary['wall_time_s']:.1f} s")

