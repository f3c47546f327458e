"""Play-table simulation speed: env steps per second with both cameras and without rendering.

Replays a fixed action sequence recorded from the play stream (contacts with the drawer, door,
button and switch included) and times ``env.step`` only. Prints one JSON line per mode with the
median over runs of wall-clock steps/s, the individual runs, the steps per second of process CPU
time (the speed with a core to itself: pybullet in DIRECT mode is single-threaded) and the machine's
load average (other processes share the CPU and slow the wall-clock numbers).

    python benchmarks/sim_speed.py [--runs 5] [--steps 300]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from diwa_jax.envs.playtable.env import PlayTable
from diwa_jax.envs.playtable.play import play_stream


def _record(n_steps: int, seed: int):
    env = PlayTable(render=False, seed=seed)
    frames = list(play_stream(env, np.random.default_rng(seed), n_steps, noise=0.3, failure_prob=0.1))
    env.close()
    first = frames[0].obs
    return first["robot_obs"], first["scene_obs"], [f.rel_action for f in frames]


def _time(env: PlayTable, robot_obs, scene_obs, actions) -> tuple[float, float]:
    """(wall-clock steps/s, process-CPU-time steps/s)."""
    env.reset(robot_obs, scene_obs)
    wall, cpu = time.perf_counter(), time.process_time()
    for action in actions:
        env.step(action)
    return len(actions) / (time.perf_counter() - wall), len(actions) / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--static-size", type=int, default=200)
    parser.add_argument("--gripper-size", type=int, default=84)
    parser.add_argument("--renderer", default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    robot_obs, scene_obs, actions = _record(args.steps, args.seed)
    modes = (
        ("render", dict(render=True, static_size=args.static_size, gripper_size=args.gripper_size, renderer=args.renderer)),
        ("no_render", dict(render=False)),
    )
    for name, kwargs in modes:
        env = PlayTable(seed=args.seed, **kwargs)
        _time(env, robot_obs, scene_obs, actions[:20])  # warm-up
        runs, cpu_runs = zip(*[_time(env, robot_obs, scene_obs, actions) for _ in range(args.runs)])
        env.close()
        record = {
            "bench": "playtable_sim_speed",
            "mode": name,
            "cameras": f"{args.static_size}x{args.static_size}+{args.gripper_size}x{args.gripper_size}" if kwargs["render"] else "none",
            "renderer": args.renderer if kwargs["render"] else None,
            "steps_per_run": len(actions),
            "median_steps_per_s": round(float(np.median(runs)), 1),
            "runs_steps_per_s": [round(r, 1) for r in runs],
            "median_cpu_time_steps_per_s": round(float(np.median(cpu_runs)), 1),
            "cpu_count": os.cpu_count(),
            "load_avg_1min": round(os.getloadavg()[0], 2),
        }
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
