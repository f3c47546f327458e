"""The ``finetune`` stage: PPO on the Dream Diffusion MDP, all in imagination (spec sections 4.2, 6.2).

Per task and fine-tuning seed ``k`` (``0 .. config.seeds - 1``): the world model, the reward classifier and
the pre-trained (EMA) denoiser from the stages before; a pool of ``ppo.n_start_states`` start latents; then
``ppo.iterations`` jitted PPO iterations through the resumable loop (checkpoints every ``ppo.ckpt_every``;
a rerun resumes exactly). Seed ``k`` has its own PPO key (``stage_key(config, "finetune/<task>/seed<k>")``)
and its own start pool; the seeds run one after another.

Start pool (``ppo.start_source``):
  ``simulator`` (the original): task starts drawn from the numpy stream (config.seed, crc32(task),
    START_STREAM, k) in the scene of ``config.env.backend``: with ``playtable`` random starts of the
    play-table's task sampler, never one of the evaluation start lists (their streams have another number
    and no config.seed); with ``calvin_env`` the first states of the task's training windows (CALVIN's own
    start distribution). Each is rendered once by a reset of that simulator and encoded by a reset
    posterior step (zero action, gripper open), as an evaluation episode encodes its first frame. The
    simulator is reset and rendered, never stepped.
  ``dataset`` (purely offline): the featurized latents at the first frame of the task's training windows.
The pool is saved in ``start_pool.npz`` on first use, so a resumed run starts from the same latents.

Every ``ppo.eval_every`` iterations, at the end, and once before the first (iteration 0 = the pre-trained
policy) the current actor is evaluated in the simulator on the task's *periodic* start list
(``start_lists``), never the final one the result table uses. Those simulator steps are counted apart from
fine-tuning's own (which must be, and are counted as, zero).

Writes ``<workdir>/finetune/<task>/seed<k>/``: ``checkpoints/`` (the ``FinetuneState``), ``metrics.jsonl``,
``start_pool.npz``, ``curve.json`` (one entry per iteration: imagined success of the episodes that ended in
that iteration's rollout, and real success where evaluated), ``transfer.json`` (the transfer diagnostic of
``diwa_jax/transfer.py`` at iteration 0 and at the end, when ``ppo.transfer_starts`` > 0) and the run's
completion marker (``artifacts.DONE``, its summary and the sampler settings the policy was trained for,
written last).
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from diwa_jax import artifacts, distributed
from diwa_jax.atomic import atomic_write
from diwa_jax.checkpoint import Checkpointer
from diwa_jax.config import ConfigError, stage_key
from diwa_jax.data.batching import RESET_ACTION, select_windows, task_windows
from diwa_jax.data.calvin_format import CalvinSplit, DataError
from diwa_jax.envs import tasks
from diwa_jax.evaluate import encode_observation, evaluate_policy
from diwa_jax.finetune.agent import FinetuneSpec, FinetuneState, create_finetune_state, make_iteration
from diwa_jax.finetune.imagine import FrozenModels, SceneReward
from diwa_jax.logging import MetricLogger, info
from diwa_jax.specs import eval_spec, evaluation_batch, finetune_spec, make_env, sampler_record, scene_geometry
from diwa_jax.stages.start_lists import sampled_starts, start_list, window_starts
from diwa_jax.training import run_loop
from diwa_jax.transfer import transfer_diagnostic
from diwa_jax.types import Latent
from diwa_jax.world_model.model import WorldModel

START_STREAM = 7001  # numpy stream (seed, task, START_STREAM) of the simulator start states


class CountingEnv:
    """A simulator wrapper counting ``reset`` and ``step`` calls: what fine-tuning asked of the simulator."""

    def __init__(self, env):
        self.env, self.resets, self.steps = env, 0, 0

    def reset(self, robot_obs=None, scene_obs=None):
        self.resets += 1
        return self.env.reset(robot_obs=robot_obs, scene_obs=scene_obs)

    def step(self, action):
        self.steps += 1
        return self.env.step(action)


# ---- start pool ---------------------------------------------------------------------------------------

def simulator_start_states(config, task: str, n: int, seed_index: int) -> tuple[np.ndarray, np.ndarray]:
    """``(robot_obs (n, 15), scene_obs (n, 24))``: starts of ``task`` in the scene of ``config.env.backend`` for
    fine-tuning seed ``seed_index``, from the stream (config.seed, crc32(task), START_STREAM, seed_index).

    ``playtable``: random starts from the play-table's task sampler. ``calvin_env``: the first states of the task's
    training windows (CALVIN's start distribution), n of them drawn without replacement when there are at least n
    windows, with replacement otherwise."""
    stream = (config.seed, tasks.stream(task), START_STREAM, seed_index)
    if config.env.backend == "playtable":
        return sampled_starts(task, n, stream, scene_geometry(config))
    split = CalvinSplit(artifacts.data_split_dir(config, "training"))
    robot, scene = window_starts(split, artifacts.caches(config)["training"], task)
    if len(robot) == 0:
        raise DataError(f"{split.dir}: no annotation windows of task '{task}', whose first frames are fine-tuning's "
                        "start states with config.env.backend='calvin_env'; add the task's annotations to the "
                        "training split or remove the task from config.tasks")
    rows = np.random.default_rng(list(stream)).choice(len(robot), size=n, replace=len(robot) < n)
    return robot[rows], scene[rows]


def encode_start_frames(world_model: WorldModel, stats, frames: list[dict], key: jax.Array, image_size: int) -> Latent:
    """``(P, ...)`` latents: each frame encoded by a reset posterior step with the reset action, exactly as an
    evaluation episode encodes its first frame (``evaluate.encode_observation``), frame i with ``fold_in(key, i)``."""
    latents = [encode_observation(world_model, stats, obs, None, RESET_ACTION, jax.random.fold_in(key, i), 0,
                                  image_size) for i, obs in enumerate(frames)]
    return jax.tree.map(lambda *x: np.concatenate([np.asarray(v) for v in x]), *latents)


def build_start_pool(config, task: str, seed_index: int, world_model: WorldModel, stats,
                     env) -> tuple[Latent, dict]:
    """The start latents of ``task`` (``config.ppo.start_source``) for fine-tuning seed ``seed_index`` and a
    description (source, count, states)."""
    n = config.ppo.n_start_states
    if config.ppo.start_source == "simulator":
        robot, scene = simulator_start_states(config, task, n, seed_index)
        frames = [env.reset(robot_obs=r, scene_obs=s) for r, s in zip(robot, scene)]
        pool = encode_start_frames(world_model, stats, frames,
                                   stage_key(config, f"finetune/{task}/seed{seed_index}/start_pool"),
                                   config.data.image_size)
        return pool, {"robot_obs": robot, "scene_obs": scene}
    split = CalvinSplit(artifacts.data_split_dir(config, "training"))
    cache = artifacts.caches(config)["training"]
    windows = task_windows(split, cache, task)
    if len(windows) == 0:
        raise DataError(f"{split.dir}: no annotation windows of task '{task}' for config.ppo.start_source="
                        "'dataset'; collect more data or use start_source='simulator'")
    rows = select_windows(windows, n, config.seed + seed_index)[:, 0]
    return artifacts.load_features(config, "training").latent(rows), {"rows": rows}


def load_or_build_start_pool(config, task: str, seed_index: int, world_model: WorldModel, stats, env) -> Latent:
    """The saved pool of an earlier (interrupted) run, else a new one, saved."""
    pool = artifacts.load_start_pool(config, task, seed_index)
    if pool is not None:
        return pool
    pool, described = build_start_pool(config, task, seed_index, world_model, stats, env)
    atomic_write(artifacts.start_pool_path(config, task, seed_index),
                 lambda f: np.savez(f, deter=np.asarray(pool.deter), stoch=np.asarray(pool.stoch), **described))
    return pool


# ---- devices ------------------------------------------------------------------------------------------

def learner_mesh(config):
    """The ``data`` mesh of ``config.ppo.devices`` devices (0: every device of every process); None for one device."""
    n = config.ppo.devices or jax.device_count()
    if n == 1:
        return None
    if n > jax.device_count():
        raise ConfigError(f"config.ppo.devices={config.ppo.devices}: JAX sees only {jax.device_count()} devices "
                          "(0 uses all of them)")
    return distributed.make_mesh(jax.devices()[:n])


def on_mesh(state: FinetuneState, shardings: FinetuneState) -> FinetuneState:
    """``state`` placed with ``shardings`` unless it is already (a fresh or a restored state is not)."""
    if jax.tree.leaves(state.actor)[0].sharding != jax.tree.leaves(shardings.actor)[0]:
        return distributed.shard(state, shardings)
    return state


def make_mesh_iteration(config, spec: FinetuneSpec, models: FrozenModels, pool: Latent, state: FinetuneState):
    """``iteration(state) -> (state, metrics)`` on ``learner_mesh(config)``: without one, ``make_iteration``'s
    single-device program; otherwise the envs and PPO minibatches are split over the mesh and the frozen models
    replicated. A state not yet on the mesh is placed there first; host values are identical in every process
    (same seed, same files)."""
    mesh = learner_mesh(config)
    if mesh is None:
        return make_iteration(spec, models, pool)
    program = distributed.sharded_iteration(spec, mesh, state)
    shardings = distributed.state_shardings(state, mesh)
    models, pool = distributed.shard((models, pool), distributed.replicated(mesh))
    info(f"[finetune] {config.ppo.n_envs} envs split over {mesh.size} devices")
    return lambda state: program(models, pool, on_mesh(state, shardings))


# ---- one task -----------------------------------------------------------------------------------------

class PeriodicEvaluation:
    """``evaluate(actor) -> result``: the fine-tuned ``actor`` (steps t < K', ``actor_pre`` above) on the task's
    periodic start list, in ``envs``; ``sim_steps`` counts the simulator steps of every call."""

    def __init__(self, config, task: str, schedule, actor_pre: dict, world_model: WorldModel, envs):
        self.spec, self.task, self.schedule, self.actor_pre = eval_spec(config), task, schedule, actor_pre
        self.key, self.world_model, self.envs = stage_key(config, f"evaluate/{task}/periodic"), world_model, envs
        self.starts, self.sim_steps = start_list(config, task, "periodic"), 0

    def __call__(self, actor) -> dict:
        result = evaluate_policy(self.spec, self.task, self.schedule, self.actor_pre, jax.device_get(actor),
                                 key=self.key, envs=self.envs, world_model=self.world_model, starts=self.starts.states)
        self.sim_steps += result["sim_steps"]
        return result

    def fill(self, entry: dict, done: int, every: int, last: int, actor, logger: MetricLogger,
             prefix: str) -> dict | None:
        """At iteration ``done`` of ``last``, evaluated every ``every``: evaluate ``actor``, put its success in the
        curve ``entry`` and the log; the result (None where the iteration is not evaluated)."""
        if done % every and done != last:
            return None
        result = self(actor)
        entry.update(real_success=result["success_rate"], eval_episodes=result["episodes"])
        logger.scalars(done, {"real_success_rate": result["success_rate"]}, prefix=prefix)
        return result


def frozen_models(config, task: str, world_model: WorldModel, stats) -> FrozenModels:
    """What fine-tuning ``task`` reads and never changes: the world model, the pre-trained policy, and the
    reward: the task's classifier, and with ``ppo.reward_source='decoded_state'`` the oracle on the scenes
    the world model decodes (denormalised with the training split's ``stats``), which replaces it."""
    schedule, actor_pre = artifacts.load_policy(config, task)
    scene_reward = None
    if config.ppo.reward_source == "decoded_state":
        scene_reward = SceneReward(state_min=jnp.asarray(stats.state_min, jnp.float32),
                                   state_scale=jnp.asarray(stats.state_scale(), jnp.float32), task=task)
    return FrozenModels(wm=world_model.params, classifier=artifacts.load_reward(config, task), actor_pre=actor_pre,
                        schedule=schedule, scene_reward=scene_reward)


def transfer_point(config, task: str, seed_index: int, models: FrozenModels, actor: dict, iteration: int,
                   world_model: WorldModel, envs, starts: int | None = None) -> dict:
    """The transfer diagnostic (``diwa_jax/transfer.py``) of ``actor`` at ``iteration`` on the first ``starts``
    (default ``config.ppo.transfer_starts``) states of the seed's simulator start stream (the start pool's own
    states with ``start_source='simulator'``)."""
    robot, scene = simulator_start_states(config, task, config.ppo.n_start_states, seed_index)
    n = config.ppo.transfer_starts if starts is None else starts
    result = transfer_diagnostic(eval_spec(config), task, models, actor, reward_mode=config.ppo.reward_mode,
                                 success_hold=config.ppo.success_hold,
                                 world_model=world_model, starts=(robot[:n], scene[:n]), envs=envs,
                                 key=stage_key(config, f"finetune/{task}/seed{seed_index}/transfer"))
    return {"iteration": iteration, **result}


def _transfer_line(point: dict) -> str:
    precision = point["classifier_precision_imagined"]
    return (f"imagined {point['imagined_success']:.2f}, real {point['real_success']:.2f}, replayed "
            f"{point['replayed_success']:.2f} from the same {point['starts']} starts, classifier precision on "
            f"imagined {'-' if precision is None else f'{precision:.2f}'}")


def finetune_task(config, task: str, seed_index: int, world_model: WorldModel, stats, env, envs) -> dict:
    """Fine-tune ``task``'s policy under fine-tuning seed ``seed_index`` (resuming from its checkpoints);
    returns the run's summary. ``env`` renders the start pool, ``envs`` (a ``SimulatorBatch``) runs the
    periodic evaluations."""
    started = time.time()
    ppo = config.ppo
    models = frozen_models(config, task, world_model, stats)
    schedule, actor_pre = models.schedule, models.actor_pre
    counting = CountingEnv(env)
    pool = load_or_build_start_pool(config, task, seed_index, world_model, stats, counting)
    spec = finetune_spec(config, task)
    state = create_finetune_state(spec, stage_key(config, f"finetune/{task}/seed{seed_index}"), actor_pre, pool)
    iteration = make_mesh_iteration(config, spec, models, pool, state)
    evaluate = PeriodicEvaluation(config, task, schedule, actor_pre, world_model, envs)

    out = artifacts.finetune_dir(config, task, seed_index)
    transfer = artifacts.read_transfer(config, task, seed_index)

    def diagnose(point: str, actor, iteration: int) -> None:
        if config.ppo.transfer_starts and transfer.get(point, {}).get("iteration") != iteration:
            transfer[point] = transfer_point(config, task, seed_index, models, jax.device_get(actor), iteration,
                                             world_model, envs)
            artifacts.write_transfer(config, task, seed_index, transfer)
            info(f"[finetune] {task} seed {seed_index} transfer at iteration {iteration}: "
                 f"{_transfer_line(transfer[point])}")

    diagnose("pretrained", actor_pre, 0)
    with MetricLogger(out, tensorboard=config.log.tensorboard) as logger, \
            Checkpointer(os.path.join(out, artifacts.CHECKPOINTS), config=config.to_dict()) as ck:
        resumed_from = ck.latest_step() or 0
        # entries after the checkpoint the loop resumes from are recomputed, identically
        curve = [e for e in artifacts.read_curve(config, task, seed_index) if e["iteration"] <= resumed_from]
        if not curve:
            result = evaluate(actor_pre)  # iteration 0: the pre-trained policy
            curve = [{"iteration": 0, "imagined_success": None, "imagined_episodes": 0,
                      "real_success": result["success_rate"], "eval_episodes": result["episodes"]}]
            logger.scalars(0, {"real_success_rate": result["success_rate"]}, prefix=f"finetune/{task}/seed{seed_index}/")
            artifacts.write_curve(config, task, seed_index, curve)

        def on_log(done: int, state: FinetuneState, mean: dict) -> None:
            entry = {"iteration": done, "imagined_success": mean["success_rate"],
                     "imagined_episodes": int(mean["episodes"]), "real_success": None, "eval_episodes": 0}
            result = evaluate.fill(entry, done, ppo.eval_every, ppo.iterations, state.actor, logger,
                                   f"finetune/{task}/seed{seed_index}/")
            if result is not None:
                info(f"[finetune] {task} seed {seed_index} iteration {done}: imagined success {mean['success_rate']:.3f}, "
                     f"real success {result['success_rate']:.3f} ({result['episodes']} episodes)")
            curve.append(entry)
            artifacts.write_curve(config, task, seed_index, curve)

        state = run_loop(name=f"finetune/{task}/seed{seed_index}", state=state, update=lambda s, _: iteration(s),
                         batch_fn=lambda step: None, num_steps=ppo.iterations, checkpointer=ck, logger=logger,
                         log_every=1, ckpt_every=ppo.ckpt_every, on_log=on_log, show_progress=config.log.progress)
    diagnose("finetuned", state.actor, int(state.step))
    final = curve[-1]
    summary = {
        "seed_index": seed_index,
        "iterations": int(state.step),
        "resumed_from": resumed_from,
        "imagined_success": final["imagined_success"],
        "imagined_success_first": curve[1]["imagined_success"] if len(curve) > 1 else None,
        "real_success_pretrained": curve[0]["real_success"],
        "real_success_final": final["real_success"],
        "alpha_bc": spec.alpha_bc,
        "start_source": ppo.start_source,
        "start_states": int(pool.deter.shape[0]),
        "finetune_sim_steps": counting.steps,  # fine-tuning's own simulator steps: zero by construction
        "start_frames_rendered": counting.resets,  # resets only (0 when the pool was reloaded or offline)
        "eval_sim_steps": evaluate.sim_steps,  # this session's periodic evaluations, counted apart
        "transfer": {point: {k: v for k, v in record.items() if not k.startswith("episode_")}
                     for point, record in transfer.items()},
        "periodic_starts": evaluate.starts.describe(),
        "sampler": sampler_record(config, config.policy.ft_denoising_steps),  # checked by every evaluation
        "imagined_wm_steps": int(state.step) * config.derived.wm_steps_per_iteration,
        "wall_time_s": round(time.time() - started, 1),
    }
    artifacts.mark_done(out, summary)
    return summary


def finetune(config) -> dict:
    """Stage runner: fine-tune the policy of every task in ``config.tasks`` in imagination."""
    world_model = artifacts.load_world_model(config)
    caches = artifacts.caches(config)
    stats = caches["training"].stats
    env, envs = make_env(config), None
    summary = {}
    try:
        envs = evaluation_batch(config, world_model, stats)
        for k in range(config.seeds):  # every task's seed 0 first
            for task in config.tasks:
                s = summary[f"{task}/seed{k}"] = finetune_task(config, task, k, world_model, stats, env, envs)
                info(f"[finetune] {task} seed {k}: {s['iterations']} iterations in {s['wall_time_s']:.0f} s, imagined "
                     f"success {s['imagined_success_first']} -> {s['imagined_success']}, real (periodic list) "
                     f"{s['real_success_pretrained']} -> {s['real_success_final']}, simulator steps while "
                     f"fine-tuning: {s['finetune_sim_steps']}")
    finally:
        if envs is not None:
            envs.close()
        env.close()
    summary["finetune_sim_steps"] = sum(s["finetune_sim_steps"] for s in summary.values())
    return summary
