"""Multi-host: two local processes joined by ``jax.distributed`` on loopback (2 CPU devices each, one 4-device
mesh) run a tiny PPO update (2 epochs x 2 minibatches, gradients and advantage statistics reduced across the
processes) with the batch sharded across both (tests/_multihost_worker.py), and agree with one process on one
device. launch.py's multi-process flags fail with one line when inconsistent."""
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from diwa_jax import distributed as dist, specs
from diwa_jax.finetune import agent
from tests.conftest import REPO
from tests.test_imagine import tiny_config, tiny_models

WORKER = os.path.join(REPO, "tests", "_multihost_worker.py")


def inputs():
    """(spec, models, state, batch, key): from fixed seeds, the same in every process."""
    config = tiny_config(n_envs=4, critic_warmup=0, alpha_bc=0.0, update_epochs=2, batch_size=4, target_kl=1e6)
    models, _, pool = tiny_models("state")
    state = agent.create_finetune_state(specs.finetune_spec(config, config.tasks[0]), jax.random.key(7), models.actor_pre, pool)
    rng = np.random.default_rng(0)
    samples, ft_steps, chunk = 8, config.policy.ft_denoising_steps, (config.policy.horizon, config.policy.action_dim)
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
    batch = agent.PPOBatch(features=normal(samples, pool.feature().shape[-1]),
                           chains=normal(samples, ft_steps + 1, *chunk),
                           old_logprobs=normal(samples, ft_steps, *chunk) - 1, advantages=normal(samples),
                           returns=normal(samples))
    return specs.finetune_spec(config, config.tasks[0]), models, state, batch, jax.random.key(2)


def flat_results(state, metrics) -> dict:
    """The updated networks and the metrics as named host arrays."""
    tree = dist.gather({"actor": state.actor, "critic": state.critic, "metrics": metrics})
    return {jax.tree_util.keystr(path): value for path, value in jax.tree_util.tree_leaves_with_path(tree)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_agree_with_one(tmp_path):
    out, port = tmp_path / "two_processes.npz", _free_port()
    workers = [subprocess.Popen([sys.executable, WORKER, str(port), str(pid), str(out)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for pid in range(2)]
    try:
        spec, models, state, batch, key = inputs()  # the one-device reference, while the workers run
        expected = flat_results(*jax.jit(agent.ppo_update, static_argnums=0)(spec, models, state, batch, key))
        logs = [worker.communicate(timeout=300)[0] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for pid, (worker, log) in enumerate(zip(workers, logs)):
        assert worker.returncode == 0, f"process {pid} failed:\n{log[-3000:]}"
    with np.load(out) as got:
        assert sorted(got.files) == sorted(expected)
        for name, value in expected.items():
            if np.issubdtype(value.dtype, np.floating):
                np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
            else:
                np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert float(expected["['metrics']['updates']"]) == 4 and float(expected["['metrics']['approx_kl']"]) != 0


def test_launch_rejects_inconsistent_process_flags(tmp_path):
    base = [sys.executable, os.path.join(REPO, "launch.py"), "--config", "experiments/calvin.py:tiny",
            "--workdir", str(tmp_path / "run")]
    for flags, message in ((["--num_processes=2"], "--coordinator_address"),
                           (["--num_processes=2", "--process_id=5", "--coordinator_address=127.0.0.1:1"],
                            "--process_id=5 must lie in [0, --num_processes=2)")):
        result = subprocess.run(base + flags, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
        assert not (tmp_path / "run").exists()  # nothing written
