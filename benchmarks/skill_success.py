"""Success of the clean scripted skills from randomised starts, judged by the oracle in 72 steps.

For each of the 8 DiWA tasks: ``--episodes`` start states from ``sample_start_state`` (seed = base +
episode), the clean expert (``style=None``), no rendering; an episode succeeds at the first step
where the task's predicate ``tasks.success(task, start, now)`` holds. Prints a markdown table.

    python benchmarks/skill_success.py [--episodes 50] [--budget 72]
"""
from __future__ import annotations

import argparse

import numpy as np

from diwa_jax.envs import protocol as P
from diwa_jax.envs import tasks
from diwa_jax.envs.tasks.diwa import TASKS
from diwa_jax.envs.playtable.env import PlayTable
from diwa_jax.envs.playtable.skills import make_skill, sample_start_state


def run_episode(env: PlayTable, task: str, seed: int, budget: int) -> int | None:
    """The step of first success, or None."""
    rng = np.random.default_rng(seed)
    obs = env.reset(*sample_start_state(task, rng))
    start = obs[P.SCENE_OBS].copy()
    skill = make_skill(task, obs, rng)
    for step in range(1, budget + 1):
        obs, _ = env.step(skill.act(obs))
        if tasks.success(task, start, obs[P.SCENE_OBS]):
            return step
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--budget", type=int, default=72)
    parser.add_argument("--seed", type=int, default=100_000, help="episode i of task k uses seed + 1000 k + i")
    args = parser.parse_args()

    env = PlayTable(render=False)
    print(f"| task | episodes | successes | rate | mean steps (successes) | max steps |")
    print("|---|---|---|---|---|---|")
    for k, task in enumerate(TASKS):
        steps = [run_episode(env, task, args.seed + 1000 * k + i, args.budget) for i in range(args.episodes)]
        wins = [s for s in steps if s is not None]
        mean = f"{np.mean(wins):.1f}" if wins else "-"
        print(f"| {task} | {args.episodes} | {len(wins)} | {len(wins) / args.episodes:.0%} | {mean} | {max(wins, default='-')} |", flush=True)
    env.close()


if __name__ == "__main__":
    main()
