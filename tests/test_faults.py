"""The fault suite: what a kill, a corrupt or hostile file, a changed config, a NaN and a bad command do.

Each case asserts the outcome a user relies on: a rerun under a changed config is refused before anything
is written (config.json and every artifact byte-identical), naming every differing key; the refusal's
advice, followed literally, redoes the stages from scratch; no checkpoint ever holds a non-finite value and
a rerun with a sane value resumes from the last finite one; a pickle holding anything but arrays and
containers is refused without running it; the coordinator listens only on the requested interface;
out-of-range values are named by file, frame and field; worker processes die with their parent; and every
bad command ends in one line with exit code 2. Tiny sizes: the shared workdir runs collect and the world
model once (tests copy it); only the cases that need a real kill use one.
"""
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import psutil
import pytest

from diwa_jax import config as configlib
from diwa_jax import pipeline
from diwa_jax.checkpoint import Checkpointer
from diwa_jax.data import calvin_format as cf
from diwa_jax import artifacts
from diwa_jax.data import collect as collect_mod
from diwa_jax.finetune.imagine import draw_starts
from diwa_jax.logging import MetricLogger
from diwa_jax.errors import TrainingDiverged
from diwa_jax.training import run_loop
from diwa_jax.types import Latent
from diwa_jax.world_model import model as wm_model
from diwa_jax.specs import world_model_spec
from diwa_jax.stages import collect as collect_stage
from experiments.calvin import get_config
from tests import _resumable_job as job
from tests.conftest import REPO

TINY = os.path.join(REPO, "experiments", "calvin.py") + ":tiny"


def tiny(workdir, **overrides):
    c = get_config("tiny")
    c.log.tensorboard = False
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        c[section][key] = value
    return configlib.finalize(c, str(workdir))


def launch(workdir, *args, timeout=300):
    cmd = [sys.executable, os.path.join(REPO, "launch.py"), "--config", TINY, "--workdir", str(workdir),
           "--config.log.tensorboard=False", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=REPO))


def one_line_error(out) -> str:
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (out.returncode, out.stderr)
    return lines[0]


def snapshot(root) -> dict:
    """Every file under ``root`` with its size, modification time and content hash."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = (os.path.getsize(path), os.stat(path).st_mtime_ns,
                                                    hashlib.sha1(f.read()).hexdigest())
    return out


def folders_to_delete(message: str) -> list[str]:
    """The folders a refusal or a divergence tells the user to delete."""
    return re.search(r"delete (.+?) to (?:redo|train)", message).group(1).split(" ")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny workdir with collect and world_model complete (copied by the tests that change it)."""
    workdir = tmp_path_factory.mktemp("faults") / "run"
    pipeline.run(tiny(workdir), ["collect", "world_model"])
    return workdir


@pytest.fixture
def workdir(base, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(base, copy)
    return copy


# ---- changed config ------------------------------------------------------------------------------


def test_changed_config_refused_naming_every_key_before_writing(workdir):
    before = snapshot(workdir)
    out = launch(workdir, "--config.seed=1", "--config.wm.lr=0.5", "--stages=collect,world_model")
    message = one_line_error(out)
    assert "config.seed" in message and "config.wm.lr" in message and "stages collect, world_model" in message
    assert folders_to_delete(message) == [str(workdir / "collect"), str(workdir / "world_model")]
    assert snapshot(workdir) == before  # config.json and every artifact untouched


def test_in_progress_stage_resumed_under_a_new_value_refused(workdir):
    # a world model killed after a checkpoint: START marker and checkpoints, no COMPLETE marker
    os.remove(workdir / "world_model" / pipeline.MARKER)
    assert (workdir / "world_model" / pipeline.STARTED).exists()
    before = snapshot(workdir)
    with pytest.raises(configlib.ConfigError, match=r"other values of config\.wm\.lr \(stages world_model\)"):
        pipeline.run(tiny(workdir, **{"wm.lr": 0.5}), ["world_model"])
    assert snapshot(workdir) == before


def test_cosmetic_change_keeps_stages_complete(workdir):
    config = tiny(workdir, **{"wm.image_every": 5, "wm.log_every": 2, "wm.ckpt_every": 4, "collect.workers": 2})
    pipeline.run(config, ["collect", "world_model"])  # skips both
    assert json.loads((workdir / "config.json").read_text())["wm"]["image_every"] == 5
    assert not pipeline.changed_keys(config, pipeline._stage("world_model"))


def test_key_added_after_a_stage_keeps_it_complete_at_its_default(workdir):
    """A stage made by a version without ``wm.inverse_dynamics_weight`` (its marker's fingerprint lacks the
    key) stays complete while the key has the preset's default (off); a run that sets it is refused."""
    for name in (pipeline.MARKER, pipeline.STARTED):
        path = workdir / "world_model" / name
        marker = json.loads(path.read_text())
        assert marker["fingerprint"].pop("wm.inverse_dynamics_weight") == 0.0
        path.write_text(json.dumps(marker))
    stage = pipeline._stage("world_model")
    assert pipeline.changed_keys(tiny(workdir), stage) == [] and pipeline.is_complete(tiny(workdir), stage)
    assert pipeline.changed_keys(tiny(workdir, **{"wm.inverse_dynamics_weight": 1.0}), stage) == [
        "wm.inverse_dynamics_weight"]


def test_fingerprint_is_own_keys_plus_parents():
    config, stage = tiny("/tmp/unused"), pipeline._stage
    evaluate, reward = pipeline.fingerprint(config, stage("evaluate")), pipeline.fingerprint(config, stage("reward"))
    assert {"collect.skill_noise", "wm.lr", "policy.lr", "reward.lr", "ppo.actor_lr", "eval.max_steps"} <= set(evaluate)
    assert "policy.lr" not in reward and "ppo.actor_lr" not in reward and "wm.lr" in reward
    assert not set(pipeline.COSMETIC) & set(evaluate)
    with_path = tiny("/tmp/unused", **{"data.path": "/data/task_D_D"})
    assert pipeline.fingerprint(with_path, stage("collect")) == {}  # an external data set: collect keys irrelevant
    assert pipeline.fingerprint(with_path, stage("world_model"))["data.path"] == "/data/task_D_D"


def test_killed_collect_rerun_under_new_seed_refused_then_advice_redoes_it(tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, os.path.join(REPO, "launch.py"), "--config", TINY, "--workdir", str(workdir),
           "--stages=collect", "--config.collect.workers=2"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = workdir / "collect" / "data" / "training" / collect_mod.SEGMENT_RECORDS
    deadline = time.time() + 120
    while not (records.exists() and any(records.iterdir())) and time.time() < deadline:
        time.sleep(0.05)
    workers = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert workers and not (workdir / "collect" / pipeline.MARKER).exists(), "collect ended before the kill"
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], "collect workers outlived the parent"

    before = snapshot(workdir)
    message = one_line_error(launch(workdir, "--config.seed=1", "--stages=collect"))
    assert "config.seed" in message and "(stages collect)" in message
    assert snapshot(workdir) == before

    for folder in folders_to_delete(message):  # the advice, literally
        shutil.rmtree(folder)
    out = launch(workdir, "--config.seed=1", "--stages=collect")
    assert out.returncode == 0 and "resuming" not in out.stdout, out.stderr
    marker = json.loads((workdir / "collect" / pipeline.MARKER).read_text())
    assert marker["fingerprint"]["seed"] == 1 and marker["summary"]["training"]["frames"] == 600


def test_collect_remakes_a_segment_whose_frames_are_missing(workdir):
    config = tiny(workdir)
    job0 = collect_stage.plan(config)["training"][0]
    frame = os.path.join(job0.split_dir, cf.frame_filename(job0.first_id + 3))
    original = cf.read_frame(frame)
    os.remove(frame)
    os.remove(workdir / "collect" / pipeline.MARKER)  # the stage is in progress again
    assert not collect_mod.segment_done(job0)
    pipeline.run(config, ["collect"])
    remade = cf.read_frame(frame)
    for key, value in original.items():
        np.testing.assert_array_equal(remade[key], value)


def test_stage_whose_input_is_missing_refused_up_front(tmp_path):
    out = launch(tmp_path / "run", "--stages=evaluate")
    message = one_line_error(out)
    assert "stage 'evaluate' reads the output of 'finetune'" in message
    assert not (tmp_path / "run").exists()


# ---- NaN -----------------------------------------------------------------------------------------


def _all_finite(tree) -> bool:
    return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree)
               if np.issubdtype(np.asarray(x).dtype, np.inexact))


def test_world_model_nan_never_checkpointed_and_sane_rerun_resumes(workdir, capsys):
    shutil.rmtree(workdir / "world_model")
    diverging = tiny(workdir, **{"wm.lr": 1e6, "wm.ckpt_every": 1})  # NaN from step 2 on
    with pytest.raises(TrainingDiverged) as e:
        pipeline.run(diverging, ["world_model"])
    ckpt_dir = artifacts.checkpoint_dir(diverging, "world_model")
    spec = world_model_spec(diverging)
    abstract = jax.eval_shape(lambda k: wm_model.init_params(k, spec), jax.random.key(0))
    with Checkpointer(ckpt_dir) as ck:
        steps = ck.all_steps()
        assert steps and all(_all_finite(ck.restore({"params": abstract}, step=s)["params"]) for s in steps)
        last = ck.latest_step()
    assert f"the last finite checkpoint (step {last})" in str(e.value) and e.value.last_finite_step == last
    assert last is not None and json.loads((workdir / "world_model" / pipeline.DIVERGED).read_text())[
        "last_finite_step"] == last

    # another architecture is not a retuning: refused
    with pytest.raises(configlib.ConfigError, match=r"config\.wm\.deter"):
        pipeline.run(tiny(workdir, **{"wm.ckpt_every": 2, "wm.deter": 16}), ["world_model"])
    capsys.readouterr()
    sane = tiny(workdir)
    # a lower lr resumes from the last finite checkpoint; here one step of lr=1e6 already wrecked it (finite but
    # huge), so it diverges again, and the advice says how to start over
    with pytest.raises(TrainingDiverged, match="diverged again after resuming under the new values") as again:
        pipeline.run(sane, ["world_model"])
    assert "resuming from its last finite checkpoint under new values of config.wm.lr" in capsys.readouterr().out
    started = json.loads((workdir / "world_model" / pipeline.STARTED).read_text())
    assert started["history"] == [{"resumed_at_step": last, "before": {"wm.lr": 1e6}, "after": {"wm.lr": sane.wm.lr}}]
    assert started["fingerprint"]["wm.lr"] == sane.wm.lr
    with Checkpointer(ckpt_dir) as ck:
        assert all(_all_finite(ck.restore({"params": abstract}, step=s)["params"]) for s in ck.all_steps())

    for folder in folders_to_delete(str(again.value)):  # the advice, literally
        shutil.rmtree(folder)
    pipeline.run(sane, ["world_model"])
    marker = json.loads((workdir / "world_model" / pipeline.MARKER).read_text())
    assert marker["fingerprint"]["wm.lr"] == sane.wm.lr and marker["history"] == []
    assert _all_finite(artifacts.load_world_model(sane).params)


def test_resume_after_divergence_continues_from_the_last_finite_checkpoint(tmp_path):
    """The loop's side: after a divergence the rerun restores the last finite checkpoint and, with the
    fault gone, ends with the numbers of a run that never diverged."""
    def poisoned(state, batch):
        new, metrics = job.update(state, batch)
        return new, {"loss": jax.numpy.where(new.step == 8, jax.numpy.inf, metrics["loss"])}

    def run(update):
        with Checkpointer(str(tmp_path / "ck")) as ck:
            return run_loop(name="job", state=job.init_state(), update=update, batch_fn=job.batch_fn, num_steps=20,
                            checkpointer=ck, log_every=5, ckpt_every=5, show_progress=False)

    with pytest.raises(TrainingDiverged, match=r"non-finite loss at step 8; the last finite checkpoint \(step 5\)"):
        run(poisoned)
    resumed = run(job.update)
    straight = job.train(str(tmp_path / "straight"), 20)
    np.testing.assert_array_equal(np.asarray(resumed.params["w"]), np.asarray(straight.params["w"]))


@pytest.mark.parametrize("bad_from,field,expected_latest", [
    (3, "loss", 2),  # between two logs: the save at step 4 is refused
    (7, "params", 5),  # finite metrics, non-finite state: the save at step 10 is refused
])
def test_non_finite_value_at_any_step_never_saved(tmp_path, bad_from, field, expected_latest):
    def update(state, batch):
        new, metrics = job.update(state, batch)
        poisoned = jax.numpy.where(new.step >= bad_from, jax.numpy.nan, 1.0)
        if field == "loss":
            return new, {"loss": metrics["loss"] * poisoned}
        return new.replace(params=jax.tree.map(lambda p: p * poisoned, new.params)), metrics

    every = {"loss": (5, 2), "params": (5, 5)}[field]
    with Checkpointer(str(tmp_path)) as ck:
        with pytest.raises(TrainingDiverged, match=f"last finite checkpoint \\(step {expected_latest}\\)"):
            run_loop(name="job", state=job.init_state(), update=update, batch_fn=job.batch_fn, num_steps=20,
                     checkpointer=ck, log_every=every[0], ckpt_every=every[1], show_progress=False)
        assert ck.latest_step() == expected_latest
        restored = ck.restore({"params": job.init_state().params})["params"]
    assert _all_finite(restored)


def test_metrics_not_relogged_after_a_kill(tmp_path):
    def run(fail_at=None):
        def batches(step):
            if step == fail_at:
                raise KeyboardInterrupt("kill")
            return job.batch_fn(step)
        with MetricLogger(str(tmp_path / "log"), tensorboard=False) as logger, \
                Checkpointer(str(tmp_path / "ck"), max_to_keep=2) as ck:
            run_loop(name="job", state=job.init_state(), update=job.update, batch_fn=batches, num_steps=10,
                     checkpointer=ck, logger=logger, log_every=1, ckpt_every=5, show_progress=False)

    with pytest.raises(KeyboardInterrupt):
        run(fail_at=8)
    run()
    steps = [json.loads(line)["step"] for line in (tmp_path / "log" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))


# ---- hostile and corrupt files -------------------------------------------------------------------


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_with_code_refused_without_running_it(tmp_path):
    split = tmp_path / "training"
    cf.write_synthetic_split(split, [(0, 15)], window=8, static_size=8, gripper_size=8)
    assert cf.load_annotations(split).tasks == ("open_drawer", "close_drawer")  # the legit pickle loads
    marker = tmp_path / "pwned"
    hostile = {"language": {"ann": ["x"], "task": ["open_drawer"], "emb": _RunsCode(marker)},
               "info": {"indx": [(0, 7)]}}
    np.save(split / cf.LANG_ANN, np.array(hostile, dtype=object), allow_pickle=True)
    with pytest.raises(cf.DataError, match=r"auto_lang_ann\.npy: refused to load language annotations: it references "
                                           r"(posix|os)\.system"):
        cf.CalvinSplit(split).annotations()
    assert not marker.exists()


@pytest.mark.parametrize("key,index,label", [("robot_obs", 9, "robot_joint_2"), ("scene_obs", 7, "red_block_y"),
                                             ("actions", 2, "tcp_z")])
def test_finite_outliers_named_by_file_frame_and_field(tmp_path, key, index, label):
    split = tmp_path / "training"
    cf.write_synthetic_split(split, [(0, 3)], window=2, static_size=8, gripper_size=8)
    path = split / cf.frame_filename(2)
    with np.load(path) as npz:
        frame = dict(npz)
    frame[key][index] = 1e30
    np.savez_compressed(path, **frame)
    named = rf"episode_0000002\.npz: '{key}'\[{index}\] \({label}\) = 1e\+30 is outside"
    with pytest.raises(cf.DataError, match=named):
        cf.CalvinSplit(split).load_frame(2)
    with pytest.raises(ValueError, match=rf"'{key}'\[{index}\]"):
        cf.write_frame(tmp_path / "other", 0, frame)


# ---- processes and sockets -----------------------------------------------------------------------


def test_pool_workers_die_with_their_parent(tmp_path):
    script = ("import sys, time; sys.path.insert(0, sys.argv[1]); from diwa_jax.workers import worker_pool\n"
              "pool = worker_pool(2); pool.map_async(time.sleep, [60, 60]); print('ready', flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", script, REPO], stdout=subprocess.PIPE, text=True)
    assert parent.stdout.readline().strip() == "ready"
    deadline = time.time() + 30
    while len(psutil.Process(parent.pid).children()) < 2 and time.time() < deadline:
        time.sleep(0.05)
    workers = psutil.Process(parent.pid).children()
    time.sleep(1.0)  # the workers are now asleep in their 60 s tasks
    parent.kill()
    parent.wait()
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert len(workers) >= 2 and not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]  # + resource tracker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_coordinator_listens_only_on_the_requested_interface():
    port = _free_port()
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from diwa_jax import distributed\n"
              "distributed.initialize(f'127.0.0.1:{sys.argv[2]}', num_processes=2, process_id=0)")
    proc = subprocess.Popen([sys.executable, "-c", script, REPO, str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    try:
        listening, deadline = [], time.time() + 60
        while not listening and time.time() < deadline:
            time.sleep(0.1)
            # gRPC may listen on an IPv6 socket: loopback then reads as the v4-mapped ::ffff:127.0.0.1
            listening = [c.laddr.ip.removeprefix("::ffff:") for c in psutil.Process(proc.pid).net_connections("inet")
                         if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    finally:
        proc.kill()
        proc.wait()
    assert listening and set(listening) == {"127.0.0.1"}, listening


# ---- bad commands: one line, exit code 2, before any work ----------------------------------------


@pytest.mark.parametrize("args,fragment", [
    (("--config.wm.classes=300",), "config.wm.classes: must be in [1, 256]"),
    (("--config.ppo.logprob_reduce=median",), "config.ppo.logprob_reduce: must be one of 'mean', 'sum'"),
    (("--config.wm.lr=inf",), "config.wm.lr: must be finite and > 0 (got inf)"),
    (("--config.ppo.gamma=nan",), "config.ppo.gamma: must be in [0, 1] (got nan)"),
    (("--config.seed=-1",), "config.seed: must be finite and >= 0 (got -1)"),
    (("--config.ppo.clip_base=0.1",), "config.ppo.clip_base: must be <= config.ppo.clip (got 0.1)"),
    (("--config.ppo.devices=64",), "config.ppo.devices=64: JAX sees only"),
    (("--config.ppo.actor_rate=1",),
     '--config.ppo.actor_rate: no such key in the config file; Did you mean "actor_lr"'),
])
def test_bad_values_one_line_exit_2_nothing_written(tmp_path, args, fragment):
    message = one_line_error(launch(tmp_path / "run", *args))
    assert fragment in message and "\\" not in message, message
    assert not (tmp_path / "run").exists()


def test_missing_config_file_one_line(tmp_path):
    cmd = [sys.executable, os.path.join(REPO, "launch.py"), "--config", str(tmp_path / "nope.py") + ":tiny",
           "--workdir", str(tmp_path / "run")]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert f"no such file {tmp_path / 'nope.py'}" in one_line_error(out)


def test_workdir_that_is_a_file_one_line(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    assert "is a file, not a folder" in one_line_error(launch(tmp_path / "run", "--stages=collect"))


def test_data_path_of_a_split_suggests_its_root(tmp_path):
    root = tmp_path / "task_D_D"
    for split in ("training", "validation"):
        (root / split).mkdir(parents=True)
    message = one_line_error(launch(tmp_path / "run", f"--config.data.path={root / 'training'}"))
    assert f"--config.data.path={root}" in message and "training/training" not in message


@contextlib.contextmanager
def read_only(path):
    """``path`` made unwritable for this user: permission bits, or for root a read-only bind mount."""
    if os.geteuid() != 0:
        modes = {p: os.stat(p).st_mode for p in [path, *map(str, path.rglob("*"))] if os.path.isdir(p)}
        for p in modes:
            os.chmod(p, 0o555)
        try:
            yield
        finally:
            for p, mode in modes.items():
                os.chmod(p, mode)
        return
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_read_only_workdir(workdir):
    (workdir / "config.json").write_text(configlib.to_json(tiny(workdir)))  # as launch.py saves it
    with read_only(workdir):
        complete = launch(workdir, "--stages=collect,world_model")  # nothing to write: tolerated
        assert complete.returncode == 0 and "finished" in complete.stdout, complete.stderr
        message = one_line_error(launch(workdir, "--stages=collect,world_model,featurize"))
    assert f"--workdir={workdir}: cannot write in {workdir}" in message


def test_task_without_validation_windows_refused_before_training(tmp_path, capsys):
    root = tmp_path / "task_D_D"
    cf.write_synthetic_split(root / "training", [(0, 31)], tasks=("open_drawer",), window=16, static_size=8,
                             gripper_size=8)
    cf.write_synthetic_split(root / "validation", [(40, 55)], tasks=("close_drawer",), window=16, static_size=8,
                             gripper_size=8)
    c = get_config("tiny")
    c.data.path, c.tasks = str(root), ("open_drawer",)
    c.data.allow_simulator_mismatch = True  # a CALVIN-format set without a simulator record counts as calvin_env's
    with pytest.raises(configlib.ConfigError, match=r"config\.tasks: no validation annotation windows of open_drawer"):
        pipeline.run(configlib.finalize(c, str(tmp_path / "run")))
    assert not (tmp_path / "run" / "world_model").exists()  # refused before the first model
    assert "warning: task 'open_drawer' has 2 training window(s)" in capsys.readouterr().out


def test_legal_edge_values():
    """The values judged legal: a collection shorter than one segment (one short segment), an episode cap
    that is not a whole number of chunks (the episode stops mid-chunk), fewer start states than envs
    (starts are drawn with replacement) and a zero sampling-std floor (log-probabilities use their own)."""
    c = get_config("tiny")
    c.collect.train_frames, c.eval.max_steps, c.ppo.n_start_states, c.ppo.min_sampling_std = 100, 10, 2, 0.0
    config = configlib.finalize(c, "/tmp/unused")
    assert [j.n_frames for j in collect_stage.plan(config)["training"]] == [100]
    pool = Latent(deter=np.arange(2.0)[:, None], stoch=np.zeros((2, 1, 1)))
    drawn = draw_starts(pool, config.ppo.n_envs, jax.random.key(0))
    assert drawn.deter.shape == (config.ppo.n_envs, 1) and set(np.asarray(drawn.deter[:, 0])) <= {0.0, 1.0}
