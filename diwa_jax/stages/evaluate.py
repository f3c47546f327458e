"""The ``evaluate`` stage: pre-trained vs fine-tuned success in the simulator, and the run's result table.

Per task, every policy is evaluated on the task's *final* start list (``start_lists``: stored once in the
workdir, the same for every policy, seed and rerun) with the same evaluation key
(``stage_key(config, "evaluate/<task>")``): the pre-trained policy (the fine-tuned denoiser steps are the
pre-trained params, ``actor_ft = actor_pre``) once, and the fine-tuned policy of every fine-tuning seed
(the *last* checkpoint of each run, never the best of several). Episode i of every policy starts from
start i, so differences are paired (``diwa_jax.stats``). Imagined success and fine-tuning's simulator-step
count come from the finetune stage, wall times from the stage markers.

``evaluate_stored`` is the one evaluation both this stage and ``python -m diwa_jax.stages.evaluate``
(re-evaluate one stored policy of a finished workdir) run, so the two give the same numbers.

Writes ``<workdir>/results.json`` (every number of the table, the seeds, the start list and each policy's
per-episode outcomes), ``<workdir>/results.md`` (the table, also printed) and ``<workdir>/success_curves.png``
(imagined and real success over fine-tuning iterations per task and seed, real with Wilson intervals).
With ``config.log.video``, also each policy's real vs imagined episode from the task's first final start
(``diwa_jax/videos.py``, fine-tuning seed 0) to TensorBoard under ``<workdir>/evaluate`` and
``<workdir>/videos/<task>_<policy>.gif``; their simulator steps count as evaluation steps.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import ml_collections
import numpy as np

from diwa_jax import artifacts, stats
from diwa_jax.atomic import atomic_write, write_json
from diwa_jax.config import COSMETIC, finalize, preset_defaults, stage_key
from diwa_jax.errors import ExpectedFailure
from diwa_jax.evaluate import evaluate_policy
from diwa_jax.finetune.imagine import REWARD_SOURCES
from diwa_jax.logging import MetricLogger, info
from diwa_jax.specs import eval_spec, evaluation_batch, make_env
from diwa_jax.stages.finetune import frozen_models, transfer_point
from diwa_jax.stages.start_lists import LISTS, start_list
from diwa_jax.videos import write_task_videos

POLICIES = ("pretrained", "finetuned", "online")  # online: the online stage's DPPO policy


def evaluate_stored(config, task: str, policy: str, *, seed_index: int = 0, list_name: str = "final",
                    ft_steps: int | None = None, envs, world_model) -> dict:
    """One stored policy of the workdir (``pretrained``; ``finetuned`` of fine-tuning seed ``seed_index``; or
    ``online``, that seed's online DPPO run) on ``task``'s start list ``list_name``, with the evaluation key of
    that list, so every policy meets the same starts and noise. ``ft_steps`` (K') other than the one the policy
    was fine-tuned with is refused (``artifacts.load_finetuned_actor``)."""
    if policy not in POLICIES:
        raise ValueError(f"policy {policy!r}: choose one of {', '.join(POLICIES)}")
    schedule, actor_pre = artifacts.load_policy(config, task)
    actor_ft = (actor_pre if policy == "pretrained" else artifacts.load_finetuned_actor(
        config, task, seed_index, ft_steps, stage="online" if policy == "online" else "finetune"))
    starts = start_list(config, task, list_name)
    purpose = f"evaluate/{task}" if list_name == "final" else f"evaluate/{task}/{list_name}"
    result = evaluate_policy(eval_spec(config), task, schedule, actor_pre, actor_ft, key=stage_key(config, purpose),
                             envs=envs, world_model=world_model, starts=starts.states)
    return {**result, "start_list": starts.describe()}


def diagnose_stored(config, task: str, policy: str, seed_index: int, starts: int, *, envs, world_model) -> dict:
    """The transfer diagnostic of one stored policy (``pretrained`` or fine-tuning seed ``seed_index``'s
    ``finetuned``) on the first ``starts`` states of that seed's start stream, as fine-tuning runs it (imagined
    success judged by ``config``'s reward: the run's, or ``judged_with``'s)."""
    if policy not in ("pretrained", "finetuned"):
        raise ValueError(f"--policy {policy!r}: the transfer diagnostic needs the fine-tuning reward, so "
                         "pretrained or finetuned")
    if not 0 < starts <= config.ppo.n_start_states:
        raise ValueError(f"--transfer {starts}: choose 1 .. config.ppo.n_start_states={config.ppo.n_start_states}")
    models = frozen_models(config, task, world_model, artifacts.caches(config)["training"].stats)
    actor = models.actor_pre if policy == "pretrained" else artifacts.load_finetuned_actor(config, task, seed_index)
    iteration = 0 if policy == "pretrained" else artifacts.finetune_summary(config, task, seed_index)["iterations"]
    return transfer_point(config, task, seed_index, models, actor, iteration, world_model, envs, starts=starts)


def _rate(result: dict) -> dict:
    n, k = result["episodes"], result["successes"]
    return {"episodes": n, "successes": k, "rate": k / n, "interval": stats.wilson_interval(k, n),
            "mean_steps": result["mean_steps"], "episode_success": [bool(x) for x in result["episode_success"]]}


def percent(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def with_interval(rate: float, interval, signed: bool = False) -> str:
    fmt = (lambda x: f"{100 * x:+.1f}") if signed else (lambda x: f"{100 * x:.1f}")  # noqa: E731
    return f"{fmt(rate)} [{fmt(interval[0])}, {fmt(interval[1])}]"


def results_table(results: dict) -> str:
    """The markdown table: one row per task and the mean over tasks (95% intervals: Wilson per rate,
    Newcombe's paired one per gain; with several seeds, mean ± std over seeds), then a per-seed table."""
    seeds = results["seeds"]
    rows = list(results["tasks"].items()) + [("**mean over tasks**", results["mean"])]
    if seeds == 1:
        lines = ["| task | episodes | pre-trained % [95% CI] | fine-tuned % [95% CI] | gain, points [paired 95% CI] "
                 "| imagined % |", "|---|---|---|---|---|---|"]
        for name, r in rows:
            ft = r["finetuned"][0]
            lines.append(f"| {name} | {r['episodes']} | {with_interval(r['pretrained']['rate'], r['pretrained']['interval'])} "
                         f"| {with_interval(ft['rate'], ft['interval'])} | {with_interval(ft['gain'], ft['gain_interval'], True)} "
                         f"| {percent(r['imagined_success']['mean'])} |")
    else:
        lines = [f"| task | episodes per policy | pre-trained % [95% CI] | fine-tuned %, mean ± std over {seeds} seeds "
                 "| gain, points, mean ± std | seeds better | imagined %, mean |", "|---|---|---|---|---|---|---|"]
        for name, r in rows:
            f, g = r["finetuned_over_seeds"], r["gain_over_seeds"]
            lines.append(f"| {name} | {r['episodes']} | {with_interval(r['pretrained']['rate'], r['pretrained']['interval'])} "
                         f"| {100 * f['mean']:.1f} ± {100 * f['std']:.1f} | {100 * g['mean']:+.1f} ± {100 * g['std']:.1f} "
                         f"| {r['seeds_better']} of {seeds} | {percent(r['imagined_success']['mean'])} |")
        lines += ["", "Per fine-tuning seed: fine-tuned % [95% CI] / gain, points [paired 95% CI]", "",
                  "| task | " + " | ".join(f"seed {k}" for k in range(seeds)) + " |", "|---|" + "---|" * seeds]
        for name, r in rows:
            cells = [f"{with_interval(ft['rate'], ft['interval'])} / {with_interval(ft['gain'], ft['gain_interval'], True)}"
                     for ft in r["finetuned"]]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Simulator steps during fine-tuning: **{results['finetune_sim_steps']}** "
                  f"(evaluation in this stage: {results['eval_sim_steps']}). Run seed {results['seed']}, fine-tuning "
                  f"seeds {results['seeds']}, preset {results['preset']}; evaluation starts: {results['start_list']}, "
                  f"start seed {results['start_seed']}; fine-tuning start pools: {results['start_source']}. The mean "
                  "over tasks has a normal interval over independent tasks."]
    return "\n".join(lines)


def plot_curves(path: str, curves: dict[str, list[list[dict]]]) -> None:
    """Imagined (every iteration) and real (evaluated iterations, periodic start list, Wilson 95% interval)
    success per task, one panel each, one line per fine-tuning seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(curves)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (task, per_seed) in zip(axes.flat, curves.items()):
        for k, entries in enumerate(per_seed):
            imagined = [(e["iteration"], 100 * e["imagined_success"]) for e in entries if e["imagined_success"] is not None]
            real = [e for e in entries if e["real_success"] is not None]
            if imagined:
                ax.plot(*zip(*imagined), color="tab:blue", linewidth=1, alpha=0.8,
                        label="imagined" if k == 0 else None)
            if real:
                x = np.array([e["iteration"] for e in real], float) + 0.8 * k
                y = np.array([100 * e["real_success"] for e in real])
                bounds = np.array([stats.wilson_interval(round(e["real_success"] * e["eval_episodes"]), e["eval_episodes"])
                                   for e in real]) * 100
                ax.errorbar(x, y, yerr=[y - bounds[:, 0], bounds[:, 1] - y], fmt="o-", color="tab:red", capsize=2,
                            markersize=3, alpha=0.8, label="real (simulator, 95% CI)" if k == 0 else None)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("PPO iteration")
        ax.set_ylabel("success %")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def transfer_over_seeds(points: list[dict]) -> dict | None:
    """A task's transfer diagnostic (``diwa_jax/transfer.py``) at iteration 0 and at the end, over the seeds that
    ran it: mean rates over seeds, the classifier's precision on imagined rollouts pooled (its true over its
    claimed successes) and its false alarms on the failed real episodes pooled (over the seeds whose
    diagnostic has them); None where no seed ran it."""
    points = [p for p in points if "pretrained" in p and "finetuned" in p]
    if not points:
        return None
    out = {"seeds": len(points), "starts": int(points[0]["pretrained"]["starts"])}
    for point in ("pretrained", "finetuned"):
        rows = [p[point] for p in points]
        claimed = sum(r["imagined_successes"] for r in rows)
        confirmed = sum(r["confirmed_successes"] for r in rows)
        out[point] = {name: float(np.mean([r[name] for r in rows])) for name in
                      ("imagined_success", "real_success", "replayed_success", "agreement",
                       "first_chunk_rms_from_pretrained")}
        out[point]["classifier_precision_imagined"] = confirmed / claimed if claimed else None
        judged = [r for r in rows if "real_failures" in r]
        failures = sum(r["real_failures"] for r in judged)
        out[point]["classifier_false_alarms_real"] = (sum(r["real_false_alarms"] for r in judged) / failures
                                                      if failures else None)
    return out


def transfer_table(tasks: dict) -> str:
    """The transfer diagnostic per task (empty where fine-tuning did not run it)."""
    rows = [(name, t["transfer"]) for name, t in tasks.items() if t.get("transfer")]
    if not rows:
        return ""
    lines = ["Transfer diagnostic: the same starts (the first of each seed's fine-tuning start pool) run closed loop "
             "in the simulator (real) and in the world model (imagined, judged by the classifier), and the imagined "
             "actions replayed open loop in the simulator; evaluation sampler and noise for all three; rates in %, "
             "means over seeds.", "",
             "| task | starts x seeds | iteration 0: imagined / real | end: imagined / real / replayed | "
             "end gap, points | classifier precision on imagined, 0 / end | its false alarms on failed real episodes, "
             "0 / end | "
             "first-chunk RMS from pre-trained |",
             "|---|---|---|---|---|---|---|---|"]
    gaps = []
    for name, t in rows:
        pre, end = t["pretrained"], t["finetuned"]
        gap = end["imagined_success"] - end["real_success"]
        gaps.append(gap)
        precision = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
        lines.append(f"| {name} | {t['starts']} x {t['seeds']} | {percent(pre['imagined_success'])} / "
                     f"{percent(pre['real_success'])} | {percent(end['imagined_success'])} / "
                     f"{percent(end['real_success'])} / {percent(end['replayed_success'])} | {100 * gap:+.1f} | "
                     f"{precision(pre['classifier_precision_imagined'])} / {precision(end['classifier_precision_imagined'])} "
                     f"| {precision(pre['classifier_false_alarms_real'])} / "
                     f"{precision(end['classifier_false_alarms_real'])} "
                     f"| {end['first_chunk_rms_from_pretrained']:.3f} |")
    lines.append(f"| **mean** | | | | {100 * float(np.mean(gaps)):+.1f} | | | |")
    return "\n".join(lines)


def _task_results(config, task: str, pre: dict, finetuned: list[dict]) -> dict:
    """One task's entry of results.json from its pre-trained and per-seed fine-tuned evaluations."""
    pre_rate = _rate(pre)
    per_seed = []
    for k, ft in enumerate(finetuned):
        rate = _rate(ft)
        paired = stats.paired_difference(pre_rate["episode_success"], rate["episode_success"])
        summary = artifacts.finetune_summary(config, task, k)
        per_seed.append({**rate, "seed_index": k, "gain": paired["difference"], "gain_interval": paired["interval"],
                         "imagined_success": summary["imagined_success"],
                         "imagined_success_first": summary["imagined_success_first"],
                         "finetune_iterations": summary["iterations"], "finetune_wall_time_s": summary["wall_time_s"],
                         "finetune_sim_steps": summary["finetune_sim_steps"],
                         "transfer": summary.get("transfer", {})})
    imagined = [ft["imagined_success"] for ft in per_seed if ft["imagined_success"] is not None]
    return {
        "episodes": pre_rate["episodes"], "pretrained": pre_rate, "finetuned": per_seed,
        "finetuned_over_seeds": stats.over_seeds([ft["rate"] for ft in per_seed]),
        "gain_over_seeds": stats.over_seeds([ft["gain"] for ft in per_seed]),
        "seeds_better": int(sum(ft["gain"] > 0 for ft in per_seed)),
        "imagined_success": stats.over_seeds(imagined) if imagined else {"mean": None},
        "finetune_sim_steps": int(sum(ft["finetune_sim_steps"] for ft in per_seed)),
        "transfer": transfer_over_seeds([ft["transfer"] for ft in per_seed]),
        "eval_sim_steps": int(pre["sim_steps"] + sum(ft["sim_steps"] for ft in finetuned)),
    }


def _mean_results(tasks: dict, seeds: int) -> dict:
    """The mean over tasks: per seed with its interval, and over seeds."""
    rows = list(tasks.values())
    mean_of = lambda rates: stats.mean_rate_over_tasks([r["successes"] for r in rates], [r["episodes"] for r in rates])  # noqa: E731
    pre = mean_of([r["pretrained"] for r in rows])
    per_seed = []
    for k in range(seeds):
        ft = mean_of([r["finetuned"][k] for r in rows])
        gain = stats.mean_paired_difference_over_tasks(
            [(r["pretrained"]["episode_success"], r["finetuned"][k]["episode_success"]) for r in rows])
        per_seed.append({"seed_index": k, "rate": ft["mean"], "interval": ft["interval"], "gain": gain["mean"],
                         "gain_interval": gain["interval"],
                         "tasks_improved": int(sum(r["finetuned"][k]["gain"] > 0 for r in rows))})
    imagined = [r["imagined_success"]["mean"] for r in rows if r["imagined_success"]["mean"] is not None]
    return {
        "episodes": int(sum(r["episodes"] for r in rows)), "pretrained": {"rate": pre["mean"], "interval": pre["interval"]},
        "finetuned": per_seed, "finetuned_over_seeds": stats.over_seeds([s["rate"] for s in per_seed]),
        "gain_over_seeds": stats.over_seeds([s["gain"] for s in per_seed]),
        "seeds_better": int(sum(s["gain"] > 0 for s in per_seed)),
        "imagined_success": {"mean": float(np.mean(imagined)) if imagined else None},
    }


def _write_videos(config, task: str, logger: MetricLogger, world_model, cache_stats) -> int:
    """The task's rollout videos (pre-trained and seed 0's fine-tuned policy); returns their simulator steps."""
    schedule, actor_pre = artifacts.load_policy(config, task)
    policies = {"pretrained": (actor_pre, actor_pre), "finetuned": (actor_pre, artifacts.load_finetuned_actor(config, task, 0))}
    env = make_env(config)
    try:
        return write_task_videos(eval_spec(config), schedule, task, policies, logger,
                                 artifacts.workdir_file(config, artifacts.VIDEO_DIR), key=stage_key(config, f"evaluate/{task}"),
                                 env=env, world_model=world_model, stats=cache_stats,
                                 starts=start_list(config, task, "final").states)
    finally:
        env.close()


def evaluate_stage(config) -> dict:
    """Stage runner: evaluate, tabulate, plot; returns the results' headline (all of it in ``results.json``)."""
    started = time.time()
    world_model = artifacts.load_world_model(config)
    cache_stats = artifacts.caches(config)["training"].stats
    videos = (MetricLogger(artifacts.stage_dir(config, "evaluate"), tensorboard=config.log.tensorboard, video=True)
              if config.log.video else None)
    tasks, curves = {}, {}
    envs = evaluation_batch(config, world_model, cache_stats)
    try:
        for task in config.tasks:
            pre = evaluate_stored(config, task, "pretrained", envs=envs, world_model=world_model)
            finetuned = [evaluate_stored(config, task, "finetuned", seed_index=k, envs=envs, world_model=world_model)
                         for k in range(config.seeds)]
            tasks[task] = _task_results(config, task, pre, finetuned)
            curves[task] = [artifacts.read_curve(config, task, k) for k in range(config.seeds)]
            if videos is not None:
                tasks[task]["eval_sim_steps"] += _write_videos(config, task, videos, world_model, cache_stats)
            t = tasks[task]
            finetuned_rates = ", ".join(f"{ft['rate']:.3f}" for ft in t["finetuned"])
            info(f"[evaluate] {task}: pre-trained {t['pretrained']['rate']:.3f}, fine-tuned {finetuned_rates} "
                 f"({t['episodes']} episodes each, "
                 f"{pre['start_list']})")
    finally:
        envs.close()
        if videos is not None:
            videos.close()
    results = {
        "preset": config.preset, "seed": config.seed, "seeds": config.seeds,
        "start_list": f"the final lists of {config.eval.start_source} starts",
        "start_seed": config.eval.start_seed, "start_source": config.ppo.start_source,
        "tasks": tasks, "mean": _mean_results(tasks, config.seeds),
        "finetune_sim_steps": int(sum(t["finetune_sim_steps"] for t in tasks.values())),
        "eval_sim_steps": int(sum(t["eval_sim_steps"] for t in tasks.values())),
        "wall_time_s": {**artifacts.stage_wall_times(config), "evaluate": round(time.time() - started, 1)},
    }
    table = results_table(results)
    diagnostic = transfer_table(tasks)
    table += f"\n\n{diagnostic}" if diagnostic else ""
    write_json(artifacts.workdir_file(config, artifacts.RESULTS_JSON), results)
    markdown = f"# DiWA results ({config.preset})\n\n{table}\n".encode()
    atomic_write(artifacts.workdir_file(config, artifacts.RESULTS_MD), lambda f: f.write(markdown))
    plot_curves(artifacts.workdir_file(config, artifacts.CURVES_PNG), curves)
    info(table)
    mean = results["mean"]
    return {"pretrained_success": mean["pretrained"]["rate"], "finetuned_success": mean["finetuned_over_seeds"],
            "gain": mean["gain_over_seeds"], "finetune_sim_steps": results["finetune_sim_steps"]}


# ---- standalone re-evaluation -----------------------------------------------------------------------------

def workdir_config(workdir: str, **execution) -> ml_collections.FrozenConfigDict:
    """The resolved config a finished run saved in ``<workdir>/config.json``. Keys that only say how work is
    spread (``config.COSMETIC``) come from ``execution`` (dotted key -> value, None: keep) or, where the
    run predates them, from its preset's defaults (as are the sections and keys it predates)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no resolved config; is {workdir} the --workdir of a run?")
    with open(path) as f:  # JSON arrays back to the config's tuples (as lists, two empty ones trip FrozenConfigDict)
        saved = json.load(f, object_pairs_hook=lambda pairs: {k: tuple(v) if isinstance(v, list) else v
                                                              for k, v in pairs})
    saved.pop("derived", None)
    config, defaults = ml_collections.ConfigDict(saved), preset_defaults(saved.get("preset", ""))
    for section in defaults.keys():  # sections and keys added after the run: no stage it finished read them
        if section not in config:
            config[section] = defaults[section]
        elif isinstance(defaults[section], ml_collections.ConfigDict):
            for name in defaults[section].keys():
                if name not in config[section]:
                    config[section][name] = defaults[section][name]
    for dotted in COSMETIC:
        section, name = dotted.split(".")
        value = execution.get(dotted)
        if value is not None or name not in config[section]:
            config[section][name] = defaults[section][name] if value is None else value
    return finalize(config, workdir)


def judged_with(config, workdir: str, **reward) -> ml_collections.FrozenConfigDict:
    """A finished run's ``config`` with other values of the keys that judge imagined success (dotted key ->
    value, None: the run's), for the transfer diagnostic's what-ifs; validated as every config is."""
    plain = config.to_dict()
    plain.pop("derived", None)
    out = ml_collections.ConfigDict(plain)
    for dotted, value in reward.items():
        if value is not None:
            section, name = dotted.split(".")
            out[section][name] = value
    return finalize(out, workdir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m diwa_jax.stages.evaluate",
        description="Re-evaluate one stored policy of a finished workdir on a task's stored start list; prints "
                    "the result as JSON (the evaluate stage's numbers for the same policy and list).")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--policy", choices=POLICIES, default="finetuned")
    parser.add_argument("--seed_index", type=int, default=0, help="fine-tuning seed (0 .. config.seeds - 1)")
    parser.add_argument("--starts", choices=LISTS, default="final", help="which stored start list")
    parser.add_argument("--ft_denoising_steps", type=int, default=None,
                        help="K' to sample with (refused unless it is the one the policy was fine-tuned with)")
    parser.add_argument("--transfer", type=int, default=0, metavar="N",
                        help="instead of a start list: the transfer diagnostic (diwa_jax/transfer.py) of the policy on "
                             "the first N states of the fine-tuning seed's start stream, as fine-tuning runs it")
    parser.add_argument("--success_hold", type=int, default=None, metavar="M",
                        help="with --transfer: imagined success as config.ppo.success_hold=M judges it (default: "
                             "the run's)")
    parser.add_argument("--reward_source", choices=REWARD_SOURCES, default=None,
                        help="with --transfer: imagined success as config.ppo.reward_source judges it (default: the "
                             "run's)")
    parser.add_argument("--envs", type=int, default=None, help="simulators in lockstep (default: the run's eval.envs)")
    parser.add_argument("--workers", type=int, default=None,
                        help="simulator processes, 0 = in this one (default: the run's eval.workers)")
    args = parser.parse_args(argv)
    try:
        config = workdir_config(args.workdir, **{"eval.envs": args.envs, "eval.workers": args.workers})
        if args.transfer:
            config = judged_with(config, args.workdir, **{"ppo.success_hold": args.success_hold,
                                                          "ppo.reward_source": args.reward_source})
        if args.task not in config.tasks:
            raise ValueError(f"--task {args.task!r}: the run has tasks {', '.join(config.tasks)}")
        world_model = artifacts.load_world_model(config)
        envs = evaluation_batch(config, world_model, artifacts.caches(config)["training"].stats)
        try:
            if args.transfer:
                print(json.dumps({"task": args.task, "policy": args.policy, "seed_index": args.seed_index,
                                  **diagnose_stored(config, args.task, args.policy, args.seed_index, args.transfer,
                                                    envs=envs, world_model=world_model)}))
                return 0
            result = evaluate_stored(config, args.task, args.policy, seed_index=args.seed_index, list_name=args.starts,
                                     ft_steps=args.ft_denoising_steps, envs=envs, world_model=world_model)
        finally:
            envs.close()
    except (ExpectedFailure, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rate = _rate(result)
    print(json.dumps({"task": args.task, "policy": args.policy, "seed_index": args.seed_index,
                      "start_list": result["start_list"], **rate}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
