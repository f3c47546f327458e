"""One process of tests/test_multihost.py: join a 2-process JAX run on loopback (2 CPU devices each), run the
tiny PPO update with its batch sharded over the 4 devices, and (process 0) save the results.

    python tests/_multihost_worker.py PORT PROCESS_ID OUT.npz
"""
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

import jax  # noqa: E402
import numpy as np  # noqa: E402

from diwa_jax import distributed as dist  # noqa: E402
from tests.test_multihost import flat_results, inputs  # noqa: E402


def main(port: str, process_id: str, out: str) -> None:
    assert dist.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(process_id))
    mesh = dist.make_mesh()
    assert mesh.size == 4 and jax.process_count() == 2 and len(mesh.local_devices) == 2
    spec, models, state, batch, key = inputs()
    update = dist.sharded_ppo_update(spec, mesh, state)
    models = dist.shard(models, dist.replicated(mesh))
    state = dist.shard(state, dist.state_shardings(state, mesh))
    state, metrics = update(models, state, dist.shard(batch, dist.batch_shardings(mesh)), key)
    results = flat_results(state, metrics)
    if jax.process_index() == 0:
        np.savez(out, **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
