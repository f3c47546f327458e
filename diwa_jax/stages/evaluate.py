"""The ``evaluate`` stage: pre-trained vs fine-tuned success in the simulator, and the run's result table.

Per task, both policies are evaluated on the same validation start states with the same evaluation key
(``stage_key(config, "evaluate/<task>")``, as fine-tuning's periodic evaluations): the pre-trained one (the fine-tuned denoiser steps are the pre-trained
params, ``actor_ft = actor_pre``) and the fine-tuned one (the last fine-tuning checkpoint). Imagined success
and fine-tuning's simulator-step count come from the finetune stage, wall times from the stage markers.

Writes ``<workdir>/results.json``, ``<workdir>/results.md`` (the table, also printed) and
``<workdir>/success_curves.png`` (imagined and real success over fine-tuning iterations per task). With
``config.log.video``, also each policy's real vs imagined episode from the task's first evaluation start
(``diwa_jax/videos.py``) to TensorBoard under ``<workdir>/evaluate`` and ``<workdir>/videos/<task>_<policy>.gif``;
their simulator steps count as evaluation steps.
"""
from __future__ import annotations

import os
import time

import numpy as np

from diwa_jax import artifacts
from diwa_jax.atomic import atomic_write, write_json
from diwa_jax.data.calvin_format import CalvinSplit
from diwa_jax.config import stage_key
from diwa_jax.evaluate import evaluate_policy
from diwa_jax.logging import MetricLogger, info
from diwa_jax.specs import eval_spec, make_env
from diwa_jax.videos import write_task_videos


def _percent(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def results_table(results: dict) -> str:
    """The markdown table: one row per task and the mean over tasks, then the simulator-step line."""
    lines = ["| task | episodes | pre-trained % | fine-tuned % | gain | imagined % |",
             "|---|---|---|---|---|---|"]
    rows = [(name, r, r["episodes"]) for name, r in results["tasks"].items()]
    rows.append(("**mean over tasks**", results["mean"], f"{results['mean']['episodes']} (total)"))
    for name, r, episodes in rows:
        gain = r["gain"]
        lines.append(f"| {name} | {episodes} | {_percent(r['pretrained_success'])} | "
                     f"{_percent(r['finetuned_success'])} | {'-' if gain is None else f'{100 * gain:+.1f}'} | "
                     f"{_percent(r['imagined_success'])} |")
    lines += ["", f"Simulator steps during fine-tuning: **{results['finetune_sim_steps']}** "
                  f"(evaluation in this stage: {results['eval_sim_steps']}; seed {results['seed']}, "
                  f"preset {results['preset']}, start states: {results['start_source']})."]
    return "\n".join(lines)


def plot_curves(path: str, curves: dict[str, list[dict]]) -> None:
    """Imagined (every iteration) and real (evaluated iterations) success per task, one panel each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(curves)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (task, entries) in zip(axes.flat, curves.items()):
        imagined = [(e["iteration"], 100 * e["imagined_success"]) for e in entries if e["imagined_success"] is not None]
        real = [(e["iteration"], 100 * e["real_success"]) for e in entries if e["real_success"] is not None]
        if imagined:
            ax.plot(*zip(*imagined), label="imagined", color="tab:blue", linewidth=1)
        if real:
            ax.plot(*zip(*real), "o-", label="real (simulator)", color="tab:red")
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("PPO iteration")
        ax.set_ylabel("success %")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"  # matplotlib picks the format from the name
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def evaluate_stage(config) -> dict:
    """Stage runner: evaluate, tabulate, plot; returns the results (also ``results.json``)."""
    started = time.time()
    world_model = artifacts.load_world_model(config)
    caches = artifacts.caches(config)
    stats = caches["training"].stats
    validation = CalvinSplit(artifacts.data_split_dir(config, "validation"))
    spec = eval_spec(config)
    env = make_env(config)
    videos = (MetricLogger(artifacts.stage_dir(config, "evaluate"), tensorboard=config.log.tensorboard, video=True)
              if config.log.video else None)
    tasks, curves = {}, {}
    try:
        for task in config.tasks:
            starts = artifacts.start_states(config, task, validation, caches["validation"])
            schedule, actor_pre = artifacts.load_policy(config, task)
            actor_ft = artifacts.load_finetuned_actor(config, task)
            common = dict(key=stage_key(config, f"evaluate/{task}"), env=env, world_model=world_model, stats=stats,
                          starts=starts)
            pre = evaluate_policy(spec, task, schedule, actor_pre, actor_pre, **common)
            ft = evaluate_policy(spec, task, schedule, actor_pre, actor_ft, **common)
            video_sim_steps = 0 if videos is None else write_task_videos(
                spec, schedule, task, {"pretrained": (actor_pre, actor_pre), "finetuned": (actor_pre, actor_ft)},
                videos, artifacts.workdir_file(config, artifacts.VIDEO_DIR), **common)
            finetuned = artifacts.finetune_summary(config, task)
            curves[task] = artifacts.read_curve(config, task)
            tasks[task] = {
                "episodes": pre["episodes"], "seed": config.seed,
                "pretrained_success": pre["success_rate"], "finetuned_success": ft["success_rate"],
                "gain": ft["success_rate"] - pre["success_rate"],
                "pretrained_successes": pre["successes"], "finetuned_successes": ft["successes"],
                "pretrained_mean_steps": pre["mean_steps"], "finetuned_mean_steps": ft["mean_steps"],
                "imagined_success": finetuned["imagined_success"],
                "imagined_success_first": finetuned["imagined_success_first"],
                "finetune_iterations": finetuned["iterations"],
                "finetune_wall_time_s": finetuned["wall_time_s"],
                "finetune_sim_steps": finetuned["finetune_sim_steps"],
                "eval_sim_steps": pre["sim_steps"] + ft["sim_steps"] + video_sim_steps,
            }
            info(f"[evaluate] {task}: pre-trained {pre['success_rate']:.3f}, fine-tuned {ft['success_rate']:.3f} "
                 f"({pre['episodes']} episodes)")
    finally:
        env.close()
        if videos is not None:
            videos.close()
    mean = lambda key: float(np.mean([t[key] for t in tasks.values()]))  # noqa: E731
    imagined = [t["imagined_success"] for t in tasks.values() if t["imagined_success"] is not None]
    results = {
        "preset": config.preset, "seed": config.seed, "start_source": config.ppo.start_source,
        "tasks": tasks,
        "mean": {"episodes": int(sum(t["episodes"] for t in tasks.values())),
                 "pretrained_success": mean("pretrained_success"), "finetuned_success": mean("finetuned_success"),
                 "gain": mean("gain"), "imagined_success": float(np.mean(imagined)) if imagined else None},
        "tasks_improved": int(sum(t["gain"] > 0 for t in tasks.values())),
        "finetune_sim_steps": int(sum(t["finetune_sim_steps"] for t in tasks.values())),
        "eval_sim_steps": int(sum(t["eval_sim_steps"] for t in tasks.values())),
        "wall_time_s": {**artifacts.stage_wall_times(config), "evaluate": round(time.time() - started, 1)},
    }
    table = results_table(results)
    write_json(artifacts.workdir_file(config, artifacts.RESULTS_JSON), results)
    markdown = f"# DiWA results ({config.preset})\n\n{table}\n".encode()
    atomic_write(artifacts.workdir_file(config, artifacts.RESULTS_MD), lambda f: f.write(markdown))
    plot_curves(artifacts.workdir_file(config, artifacts.CURVES_PNG), curves)
    info(table)
    return {"mean": results["mean"], "tasks_improved": results["tasks_improved"],
            "finetune_sim_steps": results["finetune_sim_steps"]}
