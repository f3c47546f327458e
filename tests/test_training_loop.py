"""A jitted training loop killed mid-way and resumed ends with exactly the parameters of an
uninterrupted run; non-finite metrics stop the loop without checkpointing them; one seed, one
result."""
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diwa_jax import config as configlib
from diwa_jax.checkpoint import Checkpointer
from diwa_jax.training import TrainingDiverged, run_loop
from tests import _resumable_job as job

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flat(state):
    return np.concatenate([np.asarray(state.params["w"]), [np.asarray(state.params["b"])]])


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    straight = job.train(str(tmp_path / "a"), 23)
    with pytest.raises(KeyboardInterrupt):
        job.train(str(tmp_path / "b"), 23, fail_at=13)
    with Checkpointer(str(tmp_path / "b")) as ck:
        assert ck.latest_step() == 10  # the last checkpoint before the interruption
    resumed = job.train(str(tmp_path / "b"), 23)
    assert int(resumed.step) == 23
    np.testing.assert_array_equal(_flat(resumed), _flat(straight))
    np.testing.assert_array_equal(jax.random.key_data(resumed.key), jax.random.key_data(straight.key))


def test_sigkilled_process_resumes_to_the_same_parameters(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    script = os.path.join(REPO, "tests", "_resumable_job.py")
    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, script, str(ckpt), str(tmp_path / "x.npy"), "40", "0.05"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpt.exists() and any(p.name in ("10", "15") for p in ckpt.iterdir())):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "x.npy").exists(), "the job finished before it could be killed"
    subprocess.run([sys.executable, script, str(ckpt), str(tmp_path / "x.npy"), "40"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    straight = job.train(str(tmp_path / "straight"), 40)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), _flat(straight))


def test_non_finite_metrics_stop_without_checkpoint(tmp_path):
    def update(state, batch):
        new, metrics = job.update(state, batch)
        return new, {"loss": jnp.where(new.step >= 7, jnp.nan, metrics["loss"])}

    with Checkpointer(str(tmp_path)) as ck:
        with pytest.raises(TrainingDiverged, match="non-finite loss at step 7; the last finite checkpoint \\(step 5\\)"):
            run_loop(name="job", state=job.init_state(), update=update, batch_fn=job.batch_fn, num_steps=20,
                     checkpointer=ck, log_every=5, ckpt_every=5, show_progress=False)
        ck.wait()
        assert ck.latest_step() == 5


def test_same_seed_same_numbers(tiny_config, tmp_path):
    cfg = configlib.finalize(tiny_config, str(tmp_path))
    a = jax.random.normal(configlib.stage_key(cfg, "world_model"), (8,))
    b = jax.random.normal(configlib.stage_key(cfg, "world_model"), (8,))
    c = jax.random.normal(configlib.stage_key(cfg, "policy"), (8,))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    first = job.train(str(tmp_path / "1"), 6)
    second = job.train(str(tmp_path / "2"), 6)
    np.testing.assert_array_equal(_flat(first), _flat(second))
