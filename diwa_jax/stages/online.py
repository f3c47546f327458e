"""The optional ``online`` stage: DPPO in the simulator, the baseline DiWA's zero interactions are measured against.

Run after the main job with ``--stages=online``. Per task of ``config.derived.online_tasks`` and fine-tuning seed
k: the same pre-trained policy (``online.init='pretrained'``) or DiWA's fine-tuned one (``'finetuned'``: offline,
then online), the same PPO (``config.ppo``) and the same start states as DiWA's start pool
(``finetune.simulator_start_states``: seed k's stream, never an evaluation list), fine-tuned for
``online.iterations`` iterations of rollouts in ``online.envs`` simulators (``diwa_jax/finetune/online.py``).
Episode starts are drawn uniformly from those states by the numpy stream (config.seed, crc32(task), ONLINE_STREAM,
k, iteration). Every ``online.eval_every`` iterations, once before the first and at the end, the policy is
evaluated on the task's periodic start list, the one DiWA's curve uses, so both curves are measured on the same
starts; those simulator steps are counted apart from fine-tuning's own.

Writes ``<workdir>/online/<task>/seed<k>/``: ``checkpoints/`` (the learner's ``FinetuneState``; a rerun resumes
exactly), ``metrics.jsonl``, ``curve.json`` (per iteration: the simulator steps so far, the rollout's success,
real success where evaluated) and ``done.json``; then ``online/online_vs_diwa.json`` and ``.png``: per task, DiWA's
final success on the periodic list (zero simulator steps), the simulator steps at which online fine-tuning
first reached it (None: not within the budget), and the pre-trained, DiWA and online policies on the final start
list, as the evaluate stage measures them, with online minus DiWA's paired interval.
"""
from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from diwa_jax import artifacts, distributed, stats
from diwa_jax.atomic import atomic_write, write_json
from diwa_jax.checkpoint import Checkpointer
from diwa_jax.config import stage_key
from diwa_jax.envs import tasks
from diwa_jax.finetune.agent import create_learner_state
from diwa_jax.finetune.imagine import FrozenModels
from diwa_jax.finetune.online import OnlineSpec, online_iteration
from diwa_jax.logging import MetricLogger, info
from diwa_jax.specs import evaluation_batch, finetune_spec, sampler_record, simulator_batch
from diwa_jax.stages.evaluate import evaluate_stored
from diwa_jax.stages.finetune import PeriodicEvaluation, learner_mesh, on_mesh, simulator_start_states
from diwa_jax.training import run_loop

ONLINE_STREAM = 7003  # numpy stream (seed, task, ONLINE_STREAM, k, iteration) of the episodes' start states
COMPARISON = "online_vs_diwa"


def online_spec(config, task: str) -> OnlineSpec:
    return OnlineSpec(finetune=dataclasses.replace(finetune_spec(config, task), n_envs=config.online.envs),
                      filter_every_frame=bool(config.eval.filter_every_frame))


def start_sampler(config, task: str, seed_index: int, iteration: int, starts: tuple[np.ndarray, np.ndarray]):
    """``next_start()`` of an iteration: a uniform draw from ``starts`` per call, from the iteration's own stream."""
    rng = np.random.default_rng([config.seed, tasks.stream(task), ONLINE_STREAM, seed_index, iteration])
    robot, scene = starts

    def next_start():
        i = int(rng.integers(len(robot)))
        return robot[i], scene[i]

    return next_start


def mesh_update(config, spec: OnlineSpec, models: FrozenModels, state):
    """``update(state, rollout)`` on ``finetune.learner_mesh(config)``: None (``online_iteration``'s one-device
    ``agent.learn``) without one; otherwise ``distributed.sharded_learn`` with the simulators' rollouts and every
    PPO minibatch split over the mesh and the frozen models replicated."""
    mesh = learner_mesh(config)
    if mesh is None:
        return None
    program = distributed.sharded_learn(spec.finetune, mesh, state)
    shardings, rollouts = distributed.state_shardings(state, mesh), distributed.rollout_shardings(mesh)
    models = distributed.shard(models, distributed.replicated(mesh))
    info(f"[online] the learner's batch split over {mesh.size} devices")
    return lambda state, rollout: program(models, on_mesh(state, shardings), distributed.shard(rollout, rollouts))


def online_task(config, task: str, seed_index: int, world_model, envs, eval_envs) -> dict:
    """Fine-tune ``task``'s policy online under seed ``seed_index`` (resuming from its checkpoints); its summary."""
    started = time.time()
    schedule, actor_pre = artifacts.load_policy(config, task)
    models = FrozenModels(wm=world_model.params, classifier={}, actor_pre=actor_pre, schedule=schedule)
    spec = online_spec(config, task)
    state = create_learner_state(spec.finetune, stage_key(config, f"online/{task}/seed{seed_index}"), actor_pre,
                                 config.derived.latent_dim)
    if config.online.init == "finetuned":
        state = state.replace(actor=artifacts.load_finetuned_actor(config, task, seed_index))
    starts = simulator_start_states(config, task, config.ppo.n_start_states, seed_index)
    evaluate = PeriodicEvaluation(config, task, schedule, actor_pre, world_model, eval_envs)
    out = artifacts.run_dir(config, "online", task, seed_index)
    name = f"online/{task}/seed{seed_index}"

    update = mesh_update(config, spec, models, state)

    def iteration(state, index: int):
        state, metrics, counts = online_iteration(spec, models, world_model, state, task=task, envs=envs,
                                                  next_start=start_sampler(config, task, seed_index, index, starts),
                                                  update=update)
        return state, {**metrics, "sim_steps": np.float32(counts.sim_steps), "resets": np.float32(counts.resets)}

    with MetricLogger(out, tensorboard=config.log.tensorboard) as logger, \
            Checkpointer(os.path.join(out, artifacts.CHECKPOINTS), config=config.to_dict()) as ck:
        resumed_from = ck.latest_step() or 0
        # entries after the checkpoint the loop resumes from are recomputed, identically
        curve = [e for e in artifacts.read_curve(config, task, seed_index, "online") if e["iteration"] <= resumed_from]
        if not curve:
            result = evaluate(state.actor)
            curve = [{"iteration": 0, "sim_steps": 0, "rollout_success": None, "real_success": result["success_rate"],
                      "eval_episodes": result["episodes"]}]
            artifacts.write_curve(config, task, seed_index, curve, "online")

        def on_log(done: int, state, mean: dict) -> None:
            entry = {"iteration": done, "sim_steps": curve[-1]["sim_steps"] + int(round(mean["sim_steps"])),
                     "rollout_success": mean["success_rate"], "real_success": None, "eval_episodes": 0}
            result = evaluate.fill(entry, done, config.online.eval_every, config.online.iterations, state.actor,
                                   logger, f"{name}/")
            if result is not None:
                info(f"[online] {task} seed {seed_index} iteration {done}: {entry['sim_steps']} simulator steps, real "
                     f"success {result['success_rate']:.3f} ({result['episodes']} episodes)")
            curve.append(entry)
            artifacts.write_curve(config, task, seed_index, curve, "online")

        state = run_loop(name=name, state=state, update=iteration, batch_fn=lambda step: step,
                         num_steps=config.online.iterations, checkpointer=ck, logger=logger, log_every=1,
                         ckpt_every=config.online.ckpt_every, on_log=on_log, show_progress=config.log.progress)
    summary = {
        "seed_index": seed_index,
        "init": config.online.init,
        "iterations": int(state.step),
        "resumed_from": resumed_from,
        "sim_steps": curve[-1]["sim_steps"],  # online fine-tuning's own simulator steps, every one counted
        "eval_sim_steps": evaluate.sim_steps,  # this session's periodic evaluations, counted apart
        "real_success_first": curve[0]["real_success"],
        "real_success_final": curve[-1]["real_success"],
        "periodic_starts": evaluate.starts.describe(),
        "sampler": sampler_record(config, config.policy.ft_denoising_steps),
        "wall_time_s": round(time.time() - started, 1),
    }
    artifacts.mark_done(out, summary)
    return summary


def steps_to_match(curve: list[dict], target: float) -> int | None:
    """The simulator steps of the first evaluation (after iteration 0) whose success reaches ``target``."""
    return next((e["sim_steps"] for e in curve[1:] if e["real_success"] is not None and e["real_success"] >= target),
                None)


def compare_with_diwa(config, envs, world_model) -> dict:
    """Per task and seed: DiWA's final real success on the periodic list (zero simulator steps), online's curve, the
    simulator steps online needed to reach DiWA's; and the three policies (pre-trained, DiWA's fine-tuned, online's
    last) on the task's final start list with the evaluation's key (``evaluate.evaluate_stored``, the table's
    numbers), with Wilson intervals and online minus DiWA's paired interval. Written to
    ``online/online_vs_diwa.json`` with the figure."""
    rows = {}
    for task in config.derived.online_tasks:
        pretrained = evaluate_stored(config, task, "pretrained", envs=envs, world_model=world_model)  # every seed's
        for k in range(config.seeds):
            diwa = artifacts.read_curve(config, task, k)
            online = artifacts.read_curve(config, task, k, "online")
            target = diwa[-1]["real_success"]
            final = {"pretrained": pretrained,
                     **{policy: evaluate_stored(config, task, policy, seed_index=k, envs=envs, world_model=world_model)
                        for policy in ("finetuned", "online")}}
            difference = stats.paired_difference(final["finetuned"]["episode_success"],
                                                 final["online"]["episode_success"])
            rows[f"{task}/seed{k}"] = {
                "task": task, "seed_index": k, "diwa_success": target, "diwa_sim_steps": 0,
                "pretrained_success": diwa[0]["real_success"], "online_final_success": online[-1]["real_success"],
                "online_sim_steps": online[-1]["sim_steps"], "online_steps_to_match_diwa": steps_to_match(online, target),
                "eval_episodes": online[-1]["eval_episodes"],
                "online_curve": [(e["sim_steps"], e["real_success"]) for e in online if e["real_success"] is not None],
                "final_list": {
                    "start_list": final["online"]["start_list"], "episodes": final["online"]["episodes"],
                    **{policy: {"rate": r["success_rate"], "interval": stats.wilson_interval(r["successes"], r["episodes"])}
                       for policy, r in final.items()},
                    "online_minus_diwa": {"difference": difference["difference"], "interval": difference["interval"]}}}
    path = os.path.join(artifacts.stage_dir(config, "online"), COMPARISON)
    write_json(path + ".json", {"init": config.online.init, "runs": rows})
    atomic_write(path + ".png", lambda f: _plot(rows, f))
    return rows


def _plot(rows: dict, f) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks_ = sorted({r["task"] for r in rows.values()})
    fig, axes = plt.subplots(1, len(tasks_), figsize=(4 * len(tasks_), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks_):
        for row in (r for r in rows.values() if r["task"] == task):
            steps, success = zip(*row["online_curve"])
            ax.plot(steps, success, marker=".",
                    label=f"online DPPO, periodic list ({row['eval_episodes']} episodes), seed {row['seed_index']}")
            ax.scatter([0], [row["diwa_success"]], marker="*", s=120, zorder=3,
                       label=f"DiWA (0 steps), periodic list, seed {row['seed_index']}")
            final = row["final_list"]
            for x, policy, name in ((0, "finetuned", "DiWA"), (row["online_sim_steps"], "online", "online")):
                rate, (low, high) = final[policy]["rate"], final[policy]["interval"]
                ax.errorbar([x], [rate], yerr=[[rate - low], [high - rate]], fmt="s", capsize=3, zorder=4,
                            label=f"{name}, final list ({final['episodes']} episodes, 95% CI)")
        ax.set_title(task)
        ax.set_xlabel("simulator steps")
        ax.set_ylabel("real success")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def online(config) -> dict:
    """Stage runner: online DPPO for every task of ``config.derived.online_tasks`` and seed, then the comparison."""
    world_model = artifacts.load_world_model(config)
    norm_stats = artifacts.caches(config)["training"].stats
    summary, envs, eval_envs = {}, None, None
    try:
        envs = simulator_batch(config, world_model, norm_stats, config.online.envs, config.online.workers)
        eval_envs = evaluation_batch(config, world_model, norm_stats)
        for k in range(config.seeds):
            for task in config.derived.online_tasks:
                s = summary[f"{task}/seed{k}"] = online_task(config, task, k, world_model, envs, eval_envs)
                info(f"[online] {task} seed {k}: {s['iterations']} iterations, {s['sim_steps']} simulator steps in "
                     f"{s['wall_time_s']:.0f} s, real success (periodic list) {s['real_success_first']} -> "
                     f"{s['real_success_final']}")
        rows = compare_with_diwa(config, eval_envs, world_model)
    finally:
        for batch in (envs, eval_envs):
            if batch is not None:
                batch.close()
    for key, row in rows.items():
        summary[key]["online_steps_to_match_diwa"] = row["online_steps_to_match_diwa"]
        final = row["final_list"]
        info(f"[online] {key}: DiWA {row['diwa_success']} at 0 steps; online reached it after "
             f"{row['online_steps_to_match_diwa']} steps (budget {row['online_sim_steps']}); final list "
             f"({final['episodes']} episodes): pre-trained {final['pretrained']['rate']:.3f}, DiWA "
             f"{final['finetuned']['rate']:.3f}, online {final['online']['rate']:.3f}")
    summary["sim_steps"] = sum(s["sim_steps"] for s in summary.values())
    return summary
