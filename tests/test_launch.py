"""launch.py as a user meets it: one-line errors naming the key, the resolved config saved, every stage
built, and a clear stop at a stage that is not."""
import json
import os
import subprocess
import sys

import pytest

from diwa_jax import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(*args, workdir):
    cmd = [sys.executable, os.path.join(REPO, "launch.py"), "--config",
           os.path.join(REPO, "experiments", "calvin.py") + ":tiny", "--workdir", str(workdir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=dict(os.environ, PYTHONPATH=REPO))


@pytest.mark.parametrize("override,fragment", [
    ("--config.no_such_key=1", "--config.no_such_key: no such key"),
    ("--config.ppo.nope=1", "--config.ppo.nope: no such key"),
    ("--config.ppo.actor_lr=fast", "--config.ppo.actor_lr=fast: could not convert"),
    ("--config.ppo.n_envs=2.5", "--config.ppo.n_envs=2.5"),
    ("--config.ppo.actor_lr=-1", "config.ppo.actor_lr: must be finite and > 0"),
])
def test_bad_overrides_fail_with_one_line(override, fragment, tmp_path):
    out = _launch(override, workdir=tmp_path / "w")
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], out.stderr


def test_unknown_stage_rejected(tmp_path):
    out = _launch("--stages=collect,bogus", workdir=tmp_path / "w")
    assert out.returncode == 2 and "unknown stage(s) ['bogus']" in out.stderr


def test_resolved_config_saved_with_overrides(tmp_path):
    _launch("--config.ppo.actor_lr=3e-05", "--stages=collect", workdir=tmp_path / "w")
    saved = json.loads((tmp_path / "w" / "config.json").read_text())
    assert saved["ppo"]["actor_lr"] == 3e-05
    assert saved["derived"]["workdir"] == str(tmp_path / "w")


def test_every_stage_runs_a_stage_runner_and_owns_a_workdir_folder():
    from diwa_jax import artifacts
    assert pipeline.STAGE_NAMES == artifacts.STAGES  # the layout's stage folders, in pipeline order
    for stage in pipeline.STAGES:
        assert callable(stage.runner) and stage.runner.__module__ == f"diwa_jax.stages.{stage.name}", stage.name
