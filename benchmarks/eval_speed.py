"""Closed-loop evaluation speed: episodes/s of batched evaluation against one simulator, in one run.

On a finished workdir (at least its policy stage), evaluates each task's pre-trained policy on the first
``--episodes`` starts of its stored final list with the evaluation key of the table, once per setting:
``1x0`` (one simulator in this process: the one-episode loop) and ``ExW`` (E simulators in lockstep over W
worker processes). Compilation is excluded (a two-episode run of each setting first). Prints one JSON line
per setting with the median episodes/s and simulator steps/s over ``--repeats`` runs, the runs, and the
speed-up over the first setting; then whether every episode's outcome (success, steps) agreed with the
first setting, with the episodes that differ. The load average is printed with each line: other
processes on the cores slow every setting.

    python benchmarks/eval_speed.py --workdir runs/quick --tasks open_drawer,turn_on_led --episodes 100 \
        --settings 1x0,16x2 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, for experiments/

from diwa_jax import artifacts  # noqa: E402
from diwa_jax.config import stage_key  # noqa: E402
from diwa_jax.evaluate import evaluate_policy  # noqa: E402
from diwa_jax.specs import eval_spec, evaluation_batch  # noqa: E402
from diwa_jax.stages.evaluate import workdir_config  # noqa: E402
from diwa_jax.stages.start_lists import start_list  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--tasks", default="", help="comma-separated (default: the run's first task)")
    parser.add_argument("--episodes", type=int, default=100, help="per task, the first of its final list")
    parser.add_argument("--settings", default="1x0,16x2", help="ExW: E simulators over W worker processes (0: here)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    base = workdir_config(args.workdir)
    tasks = args.tasks.split(",") if args.tasks else [base.tasks[0]]
    world_model = artifacts.load_world_model(base)
    stats = artifacts.caches(base)["training"].stats
    policies = {task: artifacts.load_policy(base, task) for task in tasks}
    starts = {task: start_list(base, task, "final").states for task in tasks}
    outcomes, first_speed = {}, None
    for setting in args.settings.split(","):
        envs_count, workers = (int(x) for x in setting.split("x"))
        config = workdir_config(args.workdir, **{"eval.envs": envs_count, "eval.workers": workers})
        spec = eval_spec(config)
        envs = evaluation_batch(config, world_model, stats)
        try:
            def run(episodes: int) -> dict:
                return {task: evaluate_policy(spec, task, policies[task][0], policies[task][1], policies[task][1],
                                              episodes, key=stage_key(config, f"evaluate/{task}"),
                                              world_model=world_model, starts=starts[task], envs=envs)
                        for task in tasks}

            run(2)  # compiles this setting's programs
            runs = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                results = run(args.episodes)
                runs.append((time.perf_counter() - started, results))
        finally:
            envs.close()
        seconds = [t for t, _ in runs]
        episodes = sum(r["episodes"] for r in runs[0][1].values())
        steps = sum(r["sim_steps"] for r in runs[0][1].values())
        speed = episodes / float(np.median(seconds))
        first_speed = first_speed or speed
        outcomes[setting] = {task: list(zip(r["episode_success"], r["episode_steps"])) for task, r in runs[0][1].items()}
        repeatable = all(r == runs[0][1] for _, r in runs)
        print(json.dumps({"setting": setting, "simulators": envs_count, "workers": workers, "episodes": episodes,
                          "sim_steps": steps, "episodes_per_s": round(speed, 3),
                          "sim_steps_per_s": round(steps / float(np.median(seconds)), 1),
                          "speedup": round(speed / first_speed, 2), "runs_s": [round(t, 2) for t in seconds],
                          "repeats_identical": repeatable,
                          "success": {t: r["success_rate"] for t, r in runs[0][1].items()},
                          "load_average": [round(x, 2) for x in os.getloadavg()]}), flush=True)
    reference_name = next(iter(outcomes))
    reference = outcomes[reference_name]
    for setting, outcome in list(outcomes.items())[1:]:
        differ = {task: [i for i, (a, b) in enumerate(zip(reference[task], outcome[task])) if a != b] for task in tasks}
        total = sum(len(v) for v in reference.values())
        print(json.dumps({"setting": setting, "against": reference_name, "episodes": total,
                          "outcomes_equal": total - sum(len(v) for v in differ.values()),
                          "differing_episodes": {t: v for t, v in differ.items() if v}}), flush=True)


if __name__ == "__main__":
    main()
