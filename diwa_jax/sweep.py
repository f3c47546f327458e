"""Sweeps: one plain run per point of ``config.sweep``'s grid, sharing the stages no point changes.

A stage whose fingerprint is the same at every point (collect ... reward when ``ppo`` keys are swept) runs once
in ``<workdir>``. The others run per point in ``<workdir>/sweep/<label>/``, a workdir of its own whose shared
stage folders, cache and start lists are links to ``<workdir>``'s: every point fine-tunes from the same world
model, policies and classifiers and is evaluated on the same start lists, so two points' numbers on a task are
paired. Each point is a run like any other (resumable, refused under changed values, re-evaluable standalone);
``sweep.json``, ``sweep.md`` and ``sweep.png`` in ``<workdir>`` set them side by side: real success on the final
lists with intervals against the imagined success fine-tuning ended at (the paper's Figure S.3).
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from diwa_jax import artifacts, pipeline, stats
from diwa_jax import config as configlib
from diwa_jax.atomic import atomic_write, write_json
from diwa_jax.logging import info
from diwa_jax.stages.evaluate import percent, with_interval

SWEEP_DIR = "sweep"
SWEEP_JSON, SWEEP_MD, SWEEP_PNG = "sweep.json", "sweep.md", "sweep.png"
SHARED_FOLDERS = ("cache", "starts")  # besides the shared stages' folders


def point_workdir(config, point: dict) -> str:
    return os.path.join(config.derived.workdir, SWEEP_DIR, configlib.sweep_label(point))


def point_run_config(config, point: dict):
    return configlib.finalize(configlib.point_config(config, point), point_workdir(config, point))


def shared_stages(points: list, stages: Sequence[pipeline.Stage]) -> tuple[pipeline.Stage, ...]:
    """The stages whose artifact is the same at every point (``points``: the points' finalized configs)."""
    return tuple(s for s in stages if all(pipeline.fingerprint(p, s) == pipeline.fingerprint(points[0], s)
                                          for p in points[1:]))


def _link(target: str, link: str) -> None:
    """``link`` -> ``target`` (relative, so the workdir may move); an existing correct link is kept."""
    relative = os.path.relpath(target, os.path.dirname(link))
    if os.path.islink(link) and os.readlink(link) == relative:
        return
    if os.path.lexists(link):
        raise configlib.ConfigError(f"{link}: exists and is not a link to {target}; delete it to rerun the sweep")
    try:
        os.symlink(relative, link)
    except FileExistsError:  # another process of a multi-host run made it first
        if not (os.path.islink(link) and os.readlink(link) == relative):
            raise


def run(config, names: Sequence[str] | None = None) -> None:
    """Run the shared stages in ``config.derived.workdir``, then each point's own stages in its folder, then
    tabulate the points whose evaluation is complete."""
    points = configlib.sweep_points(config)
    runs = [point_run_config(config, p) for p in points]
    linked = [s.name for s in shared_stages(runs, pipeline.STAGES)] + list(SHARED_FOLDERS)
    stages = pipeline.select(names)
    own = [s.name for s in stages if s.name not in linked]
    base_shapes = [s.name for s in pipeline.STAGES if s.name in linked
                   and pipeline.fingerprint(config, s) != pipeline.fingerprint(runs[0], s)]
    if base_shapes:  # never with the swept ppo keys: no shared stage reads them
        raise configlib.ConfigError(f"config.sweep: the config's own values of the swept keys shape the shared "
                                    f"stage(s) {', '.join(base_shapes)}; set them to the first swept values")
    for run_config in runs:  # every run's folder is checked before any stage runs
        if os.path.isdir(run_config.derived.workdir):
            pipeline.check_workdir(run_config)
    shared = [s.name for s in stages if s.name in linked]
    if shared:
        pipeline.run(config, shared)
    for folder in linked:
        os.makedirs(os.path.join(config.derived.workdir, folder), exist_ok=True)
    for point, run_config in zip(points, runs):
        os.makedirs(run_config.derived.workdir, exist_ok=True)
        for folder in linked:
            _link(os.path.join(config.derived.workdir, folder), os.path.join(run_config.derived.workdir, folder))
        info(f"[sweep] {configlib.sweep_label(point)}: {', '.join(own) or 'no stage'} in {run_config.derived.workdir}")
        if own:
            pipeline.run(run_config, own)
            summarize(config)  # the table so far, as each run finishes
    if not own:
        summarize(config)


def _point_row(config, point: dict) -> dict | None:
    """A point's headline from its results.json; None before its evaluation is complete."""
    run_config = point_run_config(config, point)
    path = artifacts.workdir_file(run_config, artifacts.RESULTS_JSON)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        results = json.load(f)
    mean = results["mean"]
    transfer = [t["transfer"]["finetuned"] for t in results["tasks"].values() if t.get("transfer")]
    # the lists a setting may be chosen on: fine-tuning's last periodic evaluation and the transfer starts
    ends = [artifacts.read_curve(run_config, task, k)[-1]
            for task in results["tasks"] for k in range(results["seeds"])]
    successes, episodes = sum(round(e["real_success"] * e["eval_episodes"]) for e in ends), sum(
        e["eval_episodes"] for e in ends)
    return {
        "label": configlib.sweep_label(point), "values": point, "results": os.path.relpath(path, config.derived.workdir),
        "seeds": results["seeds"], "episodes": mean["episodes"], "pretrained": mean["pretrained"],
        "finetuned": mean["finetuned"], "finetuned_over_seeds": mean["finetuned_over_seeds"],
        "gain_over_seeds": mean["gain_over_seeds"], "imagined_success": mean["imagined_success"]["mean"],
        "transfer_gap": float(np.mean([t["imagined_success"] - t["real_success"] for t in transfer])) if transfer else None,
        "transfer_real": float(np.mean([t["real_success"] for t in transfer])) if transfer else None,
        "periodic_real": {"rate": successes / episodes, "episodes": episodes,
                          "interval": list(stats.wilson_interval(successes, episodes))},
        "tasks": {task: {"pretrained": t["pretrained"]["rate"], "finetuned": t["finetuned_over_seeds"]["mean"],
                         "imagined_success": t["imagined_success"]["mean"]} for task, t in results["tasks"].items()},
    }


def sweep_table(rows: list[dict]) -> str:
    """One line per point (mean over tasks), then the fine-tuned rate per task and point."""
    lines = ["| run | periodic lists at the end, real % [95% CI] (episodes) | transfer starts at the end, real % | "
             "episodes per policy | pre-trained % [95% CI] | fine-tuned % | gain, points | imagined % at the end | "
             "imagined - real, points | transfer-diagnostic gap, points | tasks improved |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f, g = r["finetuned_over_seeds"], r["gain_over_seeds"]
        if r["seeds"] == 1:
            ft = r["finetuned"][0]
            rate, gain = with_interval(ft["rate"], ft["interval"]), with_interval(ft["gain"], ft["gain_interval"], True)
            improved = str(ft["tasks_improved"])
        else:
            rate = f"{100 * f['mean']:.1f} ± {100 * f['std']:.1f} ({r['seeds']} seeds)"
            gain = f"{100 * g['mean']:+.1f} ± {100 * g['std']:.1f}"
            improved = " / ".join(str(s["tasks_improved"]) for s in r["finetuned"])
        gap = "-" if r["imagined_success"] is None else f"{100 * (r['imagined_success'] - f['mean']):+.1f}"
        transfer = "-" if r["transfer_gap"] is None else f"{100 * r['transfer_gap']:+.1f}"
        periodic = r["periodic_real"]
        lines.append(f"| {r['label']} | {with_interval(periodic['rate'], periodic['interval'])} ({periodic['episodes']}) "
                     f"| {percent(r['transfer_real'])} | {r['episodes']} | {with_interval(r['pretrained']['rate'], r['pretrained']['interval'])} "
                     f"| {rate} | {gain} | {percent(r['imagined_success'])} | {gap} | {transfer} | {improved} of "
                     f"{len(r['tasks'])} |")
    tasks = list(rows[0]["tasks"])
    lines += ["", "Fine-tuned % / imagined % at the end, per task (pre-trained % in the second column):", "",
              "| task | pre-trained | " + " | ".join(r["label"] for r in rows) + " |", "|---|---|" + "---|" * len(rows)]
    for task in tasks:
        cells = [f"{percent(r['tasks'][task]['finetuned'])} / {percent(r['tasks'][task]['imagined_success'])}"
                 for r in rows]
        lines.append(f"| {task} | {percent(rows[0]['tasks'][task]['pretrained'])} | " + " | ".join(cells) + " |")
    lines += ["", "Choose a setting on the first two columns (fine-tuning's periodic start lists, pooled over tasks "
                  "and seeds, and the transfer diagnostic's starts from the fine-tuning pool), never on the final "
                  "lists. The rest: means over tasks of the final start lists (the same starts at every run; Wilson "
                  "and paired 95% intervals with one seed, mean ± std over seeds with several); imagined: "
                  "fine-tuning's last iteration in the world model."]
    return "\n".join(lines)


def plot_sweep(path: str, rows: list[dict]) -> None:
    """Real (final lists; 95% interval, or ± std over seeds) and imagined success against the first swept key,
    one colour per value of the others; the pre-trained policy's real success as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(rows[0]["values"]))
    xs = list(dict.fromkeys(r["values"][first] for r in rows))
    groups: dict[str, list[dict]] = {}
    for r in rows:
        rest = {k: v for k, v in r["values"].items() if k != first}
        groups.setdefault(configlib.sweep_label(rest), []).append(r)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(xs)), 3.5))
    for g, (rest, members) in enumerate(groups.items()):
        color = plt.cm.tab10(g % 10)
        x = np.array([xs.index(r["values"][first]) for r in members]) + 0.08 * g
        real = np.array([100 * r["finetuned_over_seeds"]["mean"] for r in members])
        if all(r["seeds"] == 1 for r in members):
            bounds = np.array([r["finetuned"][0]["interval"] for r in members]) * 100
            err = [real - bounds[:, 0], bounds[:, 1] - real]
        else:
            err = np.array([100 * r["finetuned_over_seeds"]["std"] for r in members])
        suffix = f", {rest}" if rest else ""
        ax.errorbar(x, real, yerr=err, fmt="o-", color=color, capsize=3, label=f"real{suffix}")
        imagined = [(xi, 100 * r["imagined_success"]) for xi, r in zip(x, members) if r["imagined_success"] is not None]
        if imagined:
            ax.plot(*zip(*imagined), "s--", color=color, alpha=0.7, label=f"imagined{suffix}")
    ax.axhline(100 * rows[0]["pretrained"]["rate"], color="gray", linestyle=":", label="pre-trained, real")
    ax.set_xticks(np.arange(len(xs)), [str(v) for v in xs])
    ax.set_xlabel(first.rpartition(".")[2])
    ax.set_ylabel("success %, mean over tasks")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def summarize(config) -> list[dict]:
    """sweep.json, sweep.md and sweep.png of the points evaluated so far (nothing before the first)."""
    points = configlib.sweep_points(config)
    rows = [r for r in (_point_row(config, p) for p in points) if r is not None]
    if not rows:
        return rows
    workdir = config.derived.workdir
    write_json(os.path.join(workdir, SWEEP_JSON),
               {"swept": configlib.sections(config, tuple(configlib.SWEPT)), "points": len(points), "runs": rows})
    table = sweep_table(rows)
    markdown = f"# Sweep ({config.preset}, {len(rows)} of {len(points)} runs evaluated)\n\n{table}\n"
    atomic_write(os.path.join(workdir, SWEEP_MD), lambda f: f.write(markdown.encode()))
    plot_sweep(os.path.join(workdir, SWEEP_PNG), rows)
    info(table)
    return rows
