"""The workdir: where every stage's output lives, when a unit of it is done, and typed loaders of it.

Layout (``W`` = ``config.derived.workdir``)::

    W/config.json                      the resolved config (launch.py)
    W/<stage>/COMPLETE.json            the pipeline's stage marker (pipeline.py)
    W/collect/data/{training,validation}/  the collected data set (unless config.data.path names one) and
                                       simulator.json, the simulator that recorded it
    W/cache/                           the preprocessed 64x64 cache (unless config.data.cache_dir names one)
    W/world_model/checkpoints/         the RSSM (train state; later stages read its ``params``)
    W/featurize/<split>/               deter.npy, stoch.npy, progress.npz
    W/policy/<task>/checkpoints/       the BC train state (later stages read ``ema_params``)
    W/reward/<task>/checkpoints/       the classifier train state (``params``)
    W/starts/<task>/{final,periodic}.npz  the task's fixed evaluation start lists (stages/start_lists.py)
    W/finetune/<task>/seed<k>/         fine-tuning seed k: checkpoints/ (the FinetuneState, ``actor``),
                                       start_pool.npz, curve.json
    W/evaluate/                        TensorBoard videos
    W/results.json, results.md, success_curves.png, videos/
    W/online/<task>/seed<k>/           online DPPO (the optional ``online`` stage): checkpoints/, curve.json;
    W/online/online_vs_diwa.json, .png the simulator steps online fine-tuning needed to match DiWA's success

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
from diwa_jax.data.preprocess import Cache, ensure_cache
from diwa_jax.policy.denoiser import init_denoiser
from diwa_jax.policy.schedule import DDPMSchedule
from diwa_jax.reward.classifier import init_classifier
from diwa_jax.errors import CheckpointError, DataError
from diwa_jax.specs import (denoiser_spec, policy_schedule, reward_spec, sampler_record, scene_geometry,
                            world_model_spec)
from diwa_jax.types import Latent
from diwa_jax.world_model import model
from diwa_jax.world_model.featurize import Features

STAGES = ("collect", "world_model", "featurize", "policy", "reward", "finetune", "evaluate", "online")
STAGE_MARKER = "COMPLETE.json"
DONE = "done.json"
SPLITS = ("training", "validation")
CHECKPOINTS = "checkpoints"
START_POOL = "start_pool.npz"
CURVE = "curve.json"
TRANSFER = "transfer.json"  # the transfer diagnostic of a fine-tuning run (diwa_jax/transfer.py)
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


def run_dir(config, stage: str, task: str, seed_index: int) -> str:
    """The folder of one run of a fine-tuning stage (``finetune``, ``online``): ``task`` under fine-tuning seed
    ``seed_index`` (0 .. config.seeds - 1)."""
    return os.path.join(task_dir(config, stage, task), f"seed{seed_index}")


def finetune_dir(config, task: str, seed_index: int) -> str:
    return run_dir(config, "finetune", task, seed_index)


def checkpoint_dir(config, stage: str, task: str | None = None) -> str:
    return os.path.join(stage_dir(config, stage) if task is None else task_dir(config, stage, task), CHECKPOINTS)


def start_list_path(config, task: str, name: str) -> str:
    return os.path.join(config.derived.workdir, "starts", task, f"{name}.npz")


def data_split_dir(config, split: str) -> str:
    return os.path.join(config.derived.data_dir, split)


SIMULATOR_RECORD = "simulator.json"


def data_simulator(config) -> dict | None:
    """Which simulator recorded the data set, ``{"backend", "scene"}`` (``<data set>/simulator.json``); None before
    a collection started. A data set named by ``config.data.path`` without the record is one of CALVIN's own
    (recorded in calvin_env); one collected in the workdir without it was made by an older diwa-jax, which
    collected in the play-table only."""
    path = os.path.join(config.derived.data_dir, SIMULATOR_RECORD)
    try:
        with open(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        if not config.derived.collect_data:
            return {"backend": "calvin_env", "scene": "unrecorded (a CALVIN data set)"}
        return {"backend": "playtable", "scene": "playtable"} if os.path.isdir(data_split_dir(config, "training")) else None
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable simulator record ({e}); write {{\"backend\": \"playtable\" or "
                        "\"calvin_env\", \"scene\": ...}} for the simulator that recorded this data set") from e
    if not isinstance(record, dict) or record.get("backend") not in ("playtable", "calvin_env"):
        raise DataError(f"{path}: not a simulator record (want {{\"backend\": \"playtable\" or \"calvin_env\", "
                        f"\"scene\": ...}}, has {record!r})")
    return record


def record_data_simulator(config) -> None:
    """Records ``config.env.backend`` as the data set's simulator; refuses to add frames of another simulator to a
    data set that has some (opting in to evaluation across simulators does not make one data set of two)."""
    recorded = data_simulator(config)
    if recorded is not None and recorded["backend"] != config.env.backend:
        raise DataError(f"{config.derived.data_dir}: this data set was recorded in {recorded['backend']}; collecting "
                        f"more of it in config.env.backend={config.env.backend!r} would mix two simulators in one "
                        "data set; use a new --workdir")
    write_json(os.path.join(config.derived.data_dir, SIMULATOR_RECORD),
               {"backend": config.env.backend, "scene": scene_geometry(config).name})


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


def _restore(unit: str, stage: str, what: str, item: str, init: Callable[[jax.Array], Any]) -> Any:
    """Item ``item`` of the last checkpoint of the finished unit folder ``unit`` of ``stage``, shaped as
    ``init``'s output; FileNotFoundError when the unit's marker is missing."""
    read_done(unit, what, stage)
    abstract = jax.eval_shape(init, jax.random.key(0))
    with Checkpointer(os.path.join(unit, CHECKPOINTS)) as ck:
        return ck.restore({item: abstract})[item]


def load_world_model(config) -> model.WorldModel:
    """The trained world model (only the ``params`` item of its checkpoint is read)."""
    spec = world_model_spec(config)
    return model.WorldModel(params=_restore(stage_dir(config, "world_model"), "world_model", "world model", "params",
                                            lambda k: model.init_params(k, spec)), spec=spec)


def _init_actor(config):
    return lambda k: init_denoiser(k, denoiser_spec(config), config.derived.latent_dim)


def load_policy(config, task: str) -> tuple[DDPMSchedule, dict]:
    """The schedule and the EMA denoiser weights of ``task``'s trained policy (the last checkpoint)."""
    return policy_schedule(config), _restore(task_dir(config, "policy", task), "policy", f"policy of '{task}'",
                                             "ema_params", _init_actor(config))


def load_reward(config, task: str) -> dict:
    """The trained classifier parameters of ``task`` (the last checkpoint)."""
    return _restore(task_dir(config, "reward", task), "reward", f"classifier of '{task}'", "params",
                    lambda k: init_classifier(k, reward_spec(config), config.derived.latent_dim))


def load_finetuned_actor(config, task: str, seed_index: int, ft_steps: int | None = None,
                         stage: str = "finetune") -> dict:
    """The fine-tuned denoiser params (steps t < K') of ``task``'s finished run of seed ``seed_index`` of the
    fine-tuning stage ``stage`` (``finetune``: DiWA in imagination; ``online``: DPPO in the simulator).

    The run's marker records the sampler it was trained for (K, K' and the sampling settings); sampling it
    under other settings (``config``'s, with ``ft_steps`` for K' when given) is refused: with another K' the
    fine-tuned tree would silently serve steps it was never trained on, or the pre-trained tree steps it was."""
    unit = run_dir(config, stage, task, seed_index)
    trained = read_done(unit, f"{stage} run of '{task}' (seed {seed_index})", stage).get("sampler")
    wanted = sampler_record(config, config.policy.ft_denoising_steps if ft_steps is None else ft_steps)
    differ = [k for k in wanted if trained is not None and trained.get(k) != wanted[k]]
    if trained is None or differ:
        what = ("records no sampler settings" if trained is None else
                ", ".join(f"{k}={trained.get(k)!r} (asked: {wanted[k]!r})" for k in differ))
        raise CheckpointError(f"{unit}: the fine-tuned policy was trained with {what}; evaluate it with the "
                              "settings it was trained with (or fine-tune again)")
    return _restore(unit, stage, f"{stage} run of '{task}'", "actor", _init_actor(config))


def load_features(config, split: str) -> Features:
    path = features_dir(config, split)
    done = read_done(path, f"features of the {split} split", "featurize")
    return Features(np.load(path / "deter.npy", mmap_mode="r"), np.load(path / "stoch.npy", mmap_mode="r"),
                    done["classes"])


def finetune_summary(config, task: str, seed_index: int) -> dict:
    return read_done(finetune_dir(config, task, seed_index), f"fine-tuning of '{task}' (seed {seed_index})", "finetune")


def start_pool_path(config, task: str, seed_index: int) -> str:
    return os.path.join(finetune_dir(config, task, seed_index), START_POOL)


def load_start_pool(config, task: str, seed_index: int) -> Latent | None:
    """The saved start pool of an earlier (interrupted) fine-tuning run of ``task``, or None."""
    path = start_pool_path(config, task, seed_index)
    if not os.path.exists(path):
        return None
    with np.load(path) as saved:
        return Latent(deter=saved["deter"], stoch=saved["stoch"])


def read_curve(config, task: str, seed_index: int, stage: str = "finetune") -> list[dict]:
    path = os.path.join(run_dir(config, stage, task, seed_index), CURVE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)["entries"]


def write_curve(config, task: str, seed_index: int, entries: list[dict], stage: str = "finetune") -> None:
    write_json(os.path.join(run_dir(config, stage, task, seed_index), CURVE),
               {"task": task, "seed_index": seed_index, "entries": entries})


def read_transfer(config, task: str, seed_index: int) -> dict:
    """The fine-tuning run's transfer diagnostic points (``{}`` before the first)."""
    path = os.path.join(finetune_dir(config, task, seed_index), TRANSFER)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def write_transfer(config, task: str, seed_index: int, points: dict) -> None:
    write_json(os.path.join(finetune_dir(config, task, seed_index), TRANSFER), points)
