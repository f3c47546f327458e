"""The workdir: where every stage's output lives, when a unit of it is done, and typed loaders of it.

Layout (``W`` = ``config.derived.workdir``)::

    W/config.json                      the resolved config (launch.py)
    W/<stage>/COMPLETE.json            the pipeline's stage marker (pipeline.py)
    W/data/{training,validation}/      the collected data set (unless config.data.path names one)
    W/cache/                           the preprocessed 64x64 cache (unless config.data.cache_dir names one)
    W/world_model/checkpoints/         the RSSM (train state; later stages read its ``params``)
    W/featurize/<split>/               deter.npy, stoch.npy, progress.npz
    W/policy/<task>/checkpoints/       the BC train state (later stages read ``ema_params``)
    W/reward/<task>/checkpoints/       the classifier train state (``params``)
    W/finetune/<task>/checkpoints/     the FinetuneState (``actor``), start_pool.npz, curve.json
    W/evaluate/                        TensorBoard videos
    W/results.json, results.md, success_curves.png, videos/

Every unit a stage finishes (a split of features, a task's policy, classifier or fine-tuning run, the world
model) ends with one marker, ``done.json`` in its folder, holding the unit's summary; it is written last,
so a unit without it is unfinished and a loader refuses it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from diwa_jax.atomic import write_json
from diwa_jax.checkpoint import Checkpointer
from diwa_jax.data.batching import select_windows, task_windows
from diwa_jax.data.calvin_format import CalvinSplit
from diwa_jax.data.preprocess import Cache, ensure_cache
from diwa_jax.policy.denoiser import init_denoiser
from diwa_jax.policy.schedule import DDPMSchedule
from diwa_jax.reward.classifier import init_classifier
from diwa_jax.specs import denoiser_spec, policy_schedule, reward_spec, world_model_spec
from diwa_jax.types import Latent
from diwa_jax.world_model import model
from diwa_jax.world_model.featurize import Features

STAGES = ("collect", "world_model", "featurize", "policy", "reward", "finetune", "evaluate")
STAGE_MARKER = "COMPLETE.json"
DONE = "done.json"
SPLITS = ("training", "validation")
CHECKPOINTS = "checkpoints"
START_POOL = "start_pool.npz"
CURVE = "curve.json"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
CURVES_PNG = "success_curves.png"
VIDEO_DIR = "videos"


# ---- layout ------------------------------------------------------------------------------------------

def stage_dir(config, stage: str) -> str:
    return os.path.join(config.derived.workdir, stage)


def stage_marker(config, stage: str) -> str:
    return os.path.join(stage_dir(config, stage), STAGE_MARKER)


def task_dir(config, stage: str, task: str) -> str:
    """The folder of one task's output of a per-task stage (policy, reward, finetune)."""
    return os.path.join(stage_dir(config, stage), task)


def checkpoint_dir(config, stage: str, task: str | None = None) -> str:
    return os.path.join(stage_dir(config, stage) if task is None else task_dir(config, stage, task), CHECKPOINTS)


def data_split_dir(config, split: str) -> str:
    return os.path.join(config.derived.data_dir, split)


def features_dir(config, split: str) -> Path:
    return Path(stage_dir(config, "featurize")) / split


def workdir_file(config, name: str) -> str:
    return os.path.join(config.derived.workdir, name)


# ---- completion markers --------------------------------------------------------------------------------

def mark_done(directory: str | os.PathLike, summary: dict) -> None:
    write_json(Path(directory) / DONE, summary)


def is_done(directory: str | os.PathLike) -> bool:
    return (Path(directory) / DONE).exists()


def read_done(directory: str | os.PathLike, what: str, stage: str) -> dict:
    """The summary in ``directory``'s marker; FileNotFoundError naming the stage to run when it is unfinished."""
    path = Path(directory) / DONE
    if not path.exists():
        raise FileNotFoundError(f"{directory}: no finished {what}; run the '{stage}' stage")
    return json.loads(path.read_text())


def stage_wall_times(config) -> dict:
    """Seconds per finished stage, from the stage markers (stages without a marker are left out)."""
    times = {}
    for stage in STAGES:
        path = stage_marker(config, stage)
        if os.path.exists(path):
            with open(path) as f:
                times[stage] = json.load(f)["summary"].get("wall_time_s")
    return times


# ---- typed loaders ---------------------------------------------------------------------------------------

def caches(config) -> dict[str, Cache]:
    """The preprocessed cache of both splits (built, or resumed, on first use; training statistics)."""
    return ensure_cache(config.derived.data_dir, config.derived.cache_dir, SPLITS, image_size=config.data.image_size,
                        rot6d=config.data.rot6d, workers=config.data.cache_workers,
                        chunk_frames=config.data.cache_chunk_frames, progress=config.log.progress)


def _restore(config, stage: str, task: str | None, what: str, item: str, init: Callable[[jax.Array], Any]) -> Any:
    """Item ``item`` of the last checkpoint of a finished unit (a stage's, or a task's of a stage), shaped as
    ``init``'s output; FileNotFoundError when the unit's marker is missing."""
    unit = stage_dir(config, stage) if task is None else task_dir(config, stage, task)
    read_done(unit, what, stage)
    abstract = jax.eval_shape(init, jax.random.key(0))
    with Checkpointer(checkpoint_dir(config, stage, task)) as ck:
        return ck.restore({item: abstract})[item]


def load_world_model(config) -> model.WorldModel:
    """The trained world model (only the ``params`` item of its checkpoint is read)."""
    spec = world_model_spec(config)
    return model.WorldModel(params=_restore(config, "world_model", None, "world model", "params",
                                            lambda k: model.init_params(k, spec)), spec=spec)


def _init_actor(config):
    return lambda k: init_denoiser(k, denoiser_spec(config), config.derived.latent_dim)


def load_policy(config, task: str) -> tuple[DDPMSchedule, dict]:
    """The schedule and the EMA denoiser weights of ``task``'s trained policy (the last checkpoint)."""
    return policy_schedule(config), _restore(config, "policy", task, f"policy of '{task}'", "ema_params",
                                             _init_actor(config))


def load_reward(config, task: str) -> dict:
    """The trained classifier parameters of ``task`` (the last checkpoint)."""
    return _restore(config, "reward", task, f"classifier of '{task}'", "params",
                    lambda k: init_classifier(k, reward_spec(config), config.derived.latent_dim))


def load_finetuned_actor(config, task: str) -> dict:
    """The fine-tuned denoiser params (steps t < K') of ``task``'s finished fine-tuning run."""
    return _restore(config, "finetune", task, f"fine-tuning of '{task}'", "actor", _init_actor(config))


def start_states(config, task: str, split: CalvinSplit, cache: Cache) -> tuple[np.ndarray, np.ndarray]:
    """``(robot_obs (E, 15), scene_obs (E, 24))`` the evaluation starts from: the first frame of the task's
    windows in ``split`` (the validation split), ``config.eval.max_episodes`` of them drawn with ``config.seed``
    (0: all)."""
    windows = task_windows(split, cache, task)
    if config.eval.max_episodes:
        windows = select_windows(windows, config.eval.max_episodes, config.seed)
    rows = windows[:, 0]
    return np.asarray(cache.robot_obs[rows]), np.asarray(cache.scene_obs[rows])


def load_features(config, split: str) -> Features:
    path = features_dir(config, split)
    done = read_done(path, f"features of the {split} split", "featurize")
    return Features(np.load(path / "deter.npy", mmap_mode="r"), np.load(path / "stoch.npy", mmap_mode="r"),
                    done["classes"])


def finetune_summary(config, task: str) -> dict:
    return read_done(task_dir(config, "finetune", task), f"fine-tuning of '{task}'", "finetune")


def start_pool_path(config, task: str) -> str:
    return os.path.join(task_dir(config, "finetune", task), START_POOL)


def load_start_pool(config, task: str) -> Latent | None:
    """The saved start pool of an earlier (interrupted) fine-tuning run of ``task``, or None."""
    path = start_pool_path(config, task)
    if not os.path.exists(path):
        return None
    with np.load(path) as saved:
        return Latent(deter=saved["deter"], stoch=saved["stoch"])


def read_curve(config, task: str) -> list[dict]:
    path = os.path.join(task_dir(config, "finetune", task), CURVE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)["entries"]


def write_curve(config, task: str, entries: list[dict]) -> None:
    write_json(os.path.join(task_dir(config, "finetune", task), CURVE), {"task": task, "entries": entries})
