"""Online DPPO throughput: simulator steps/s of online iterations with E simulators over W worker processes.

On a finished workdir (at least its policy stage), runs ``--iterations`` online PPO iterations of the task's
pre-trained policy (``diwa_jax/finetune/online.py``: rollouts in the simulators through the world model's
filter, then the PPO update) per setting, after one untimed iteration that compiles. Prints one JSON line per
setting: median simulator steps/s of whole iterations and of their rollouts alone, the share of the iteration
the rollout takes, and the load average (other processes on the cores slow every setting).

    python benchmarks/online_speed.py --workdir runs/quick --task open_drawer --settings 8x2,16x2 --iterations 3
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, for experiments/

from diwa_jax import artifacts  # noqa: E402
from diwa_jax.finetune import online as online_lib  # noqa: E402
from diwa_jax.finetune.agent import create_learner_state  # noqa: E402
from diwa_jax.finetune.imagine import FrozenModels  # noqa: E402
from diwa_jax.specs import simulator_batch  # noqa: E402
from diwa_jax.stages.evaluate import workdir_config  # noqa: E402
from diwa_jax.stages.finetune import simulator_start_states  # noqa: E402
from diwa_jax.stages.online import online_spec, start_sampler  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--task", default="", help="default: the run's first task")
    parser.add_argument("--settings", default="8x2", help="ExW: E simulators over W worker processes (0: here)")
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per setting")
    parser.add_argument("--backend", default="", help="run the simulators of this backend instead of the run's "
                        "(throughput only: the policy then acts in a scene its models were not trained on)")
    args = parser.parse_args()

    for setting in args.settings.split(","):
        envs_count, workers = (int(x) for x in setting.split("x"))
        config = _with_envs(args.workdir, envs_count, workers, args.backend)
        task = args.task or config.tasks[0]
        world_model = artifacts.load_world_model(config)
        stats = artifacts.caches(config)["training"].stats
        schedule, actor_pre = artifacts.load_policy(config, task)
        models = FrozenModels(wm=world_model.params, classifier={}, actor_pre=actor_pre, schedule=schedule)
        spec = online_spec(config, task)
        state = create_learner_state(spec.finetune, jax.random.key(0), actor_pre, config.derived.latent_dim)
        starts = simulator_start_states(config, task, config.ppo.n_start_states, 0)
        envs = simulator_batch(config, world_model, stats, envs_count, workers)
        try:
            whole, rollout_only = [], []
            for i in range(args.iterations + 1):
                sampler = start_sampler(config, task, 0, i, starts)
                began = time.perf_counter()
                rollout, counts = online_lib.collect_rollout(
                    spec, models, world_model, state.actor, jax.random.split(state.key, 3)[0], task=task, envs=envs,
                    next_start=sampler)
                collected = time.perf_counter()
                state, metrics = online_lib.learn_jit(spec.finetune, models, state, jax.tree.map(jnp.asarray, rollout))
                jax.block_until_ready(metrics)
                ended = time.perf_counter()
                if i > 0:  # the first compiles
                    whole.append(counts.sim_steps / (ended - began))
                    rollout_only.append(counts.sim_steps / (collected - began))
        finally:
            envs.close()
        print(json.dumps({"setting": setting, "backend": config.env.backend, "task": task, "iterations": args.iterations,
                          "sim_steps_per_iteration": counts.sim_steps,
                          "steps_per_s": round(float(np.median(whole)), 1),
                          "rollout_steps_per_s": round(float(np.median(rollout_only)), 1),
                          "rollout_share": round(float(np.median(whole) / np.median(rollout_only)), 3),
                          "runs": [round(x, 1) for x in whole], "load": os.getloadavg()}), flush=True)


def _with_envs(workdir: str, envs_count: int, workers: int, backend: str):
    """The run's config with ``online.envs`` and ``online.workers`` set (``online.envs`` shapes online runs, so it is
    not one of the execution keys ``workdir_config`` takes), and ``env.backend`` where ``backend`` names one."""
    import ml_collections

    from diwa_jax.config import finalize
    base = workdir_config(workdir, **{"online.workers": workers}).to_dict()
    base.pop("derived")
    base["online"]["envs"] = envs_count
    base["env"]["backend"] = backend or base["env"]["backend"]
    return finalize(ml_collections.ConfigDict(base), workdir)


if __name__ == "__main__":
    main()
