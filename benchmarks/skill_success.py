"""Success of the clean scripted skills from randomised starts, judged by the oracle in 72 steps.

For each of the 8 DiWA tasks: ``--episodes`` start states from ``sample_start_state`` (seed = base +
episode), the clean expert (``style=None``), no rendering; an episode succeeds at the first step
where the task's predicate ``tasks.success(task, start, now)`` holds. Prints a markdown table.

    python benchmarks/skill_success.py [--episodes 50] [--budget 72] [--backend playtable|calvin_env]

``--backend calvin_env`` runs them in CALVIN's scene D (calvin_env installed; it always renders, here at
``--render_size`` pixels, which the skills do not look at).
"""
from __future__ import annotations

import argparse

import numpy as np

from diwa_jax.envs import protocol as P
from diwa_jax.envs import tasks
from diwa_jax.envs.tasks.diwa import TASKS
from diwa_jax.envs.playtable.skills import make_skill, sample_start_state


def run_episode(env: P.Simulator, task: str, seed: int, budget: int) -> int | None:
    """The step of first success, or None."""
    rng = np.random.default_rng(seed)
    obs = env.reset(*sample_start_state(task, rng, env.geometry))
    start = obs[P.SCENE_OBS].copy()
    skill = make_skill(task, obs, rng, env.geometry)
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
    parser.add_argument("--backend", choices=("playtable", "calvin_env"), default="playtable")
    parser.add_argument("--render_size", type=int, default=32, help="calvin_env's camera size in pixels")
    parser.add_argument("--tasks", default=",".join(TASKS))
    args = parser.parse_args()

    if args.backend == "playtable":
        from diwa_jax.envs.playtable.env import PlayTable
        env = PlayTable(render=False)
    else:
        from diwa_jax.envs.calvin_env import CalvinEnvAdapter
        env = CalvinEnvAdapter(use_egl=False, static_size=args.render_size, gripper_size=args.render_size)
    print(f"{args.backend} ({env.geometry.name}), budget {args.budget} steps")
    print(f"| task | episodes | successes | rate | mean steps (successes) | max steps |")
    print("|---|---|---|---|---|---|")
    for k, task in enumerate(TASKS):
        if task not in args.tasks.split(","):
            continue
        steps = [run_episode(env, task, args.seed + 1000 * k + i, args.budget) for i in range(args.episodes)]
        wins = [s for s in steps if s is not None]
        mean = f"{np.mean(wins):.1f}" if wins else "-"
        print(f"| {task} | {args.episodes} | {len(wins)} | {len(wins) / args.episodes:.0%} | {mean} | {max(wins, default='-')} |", flush=True)
    env.close()


if __name__ == "__main__":
    main()
