"""The online DPPO baseline (``--stages=online``) on the tiny preset: every simulator step is counted exactly; an
online iteration is a function of what the simulators returned (replaying a recorded trajectory gives the same
update) and its update is offline fine-tuning's ``agent.learn`` on that trajectory; a killed run resumes to the
uninterrupted result; the stage writes its curves and the comparison with DiWA."""
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diwa_jax import artifacts, pipeline, specs
from diwa_jax import config as configlib
from diwa_jax.checkpoint import Checkpointer
from diwa_jax.envs.batch import SimulatorBatch, Steps
from diwa_jax.evaluate import observation_transform
from diwa_jax.finetune import online as online_lib
from diwa_jax.finetune.agent import create_learner_state, learn
from diwa_jax.finetune.imagine import FrozenModels
from diwa_jax.policy.sampling import chain_logprob
from diwa_jax.stages import online as stage
from diwa_jax.stages.finetune import CountingEnv, simulator_start_states
from diwa_jax.training import restore_state
from experiments.calvin import get_config
from tests.conftest import REPO

TASK = "move_slider_left"  # the tiny preset's one task


def tiny(workdir, **online):
    c = get_config("tiny")
    c.online.update(online)
    return configlib.finalize(c, str(workdir))


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    """A finished tiny main job (no online stage)."""
    workdir = tmp_path_factory.mktemp("online") / "run"
    pipeline.run(tiny(workdir))
    return workdir


def leaves(tree):
    is_key = lambda x: isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)  # noqa: E731
    return [np.asarray(jax.random.key_data(x) if is_key(x) else x) for x in jax.tree.leaves(tree)]


def assert_same(a, b):
    la, lb = leaves(a), leaves(b)
    assert len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


class Recording:
    """A ``SimulatorBatch`` stand-in that passes commands on and records every command and outcome."""

    def __init__(self, envs):
        self.envs, self.num_envs, self.log = envs, envs.num_envs, []

    def run(self, commands):
        outcomes = self.envs.run(commands)
        self.log.append((commands, outcomes))
        return outcomes


class Replay:
    """Answers each round with a recorded round's outcomes (no simulator), checking the commands match."""

    def __init__(self, log):
        self.log, self.num_envs, self.round = log, len(log[0][0]), 0

    def run(self, commands):
        recorded, outcomes = self.log[self.round]
        self.round += 1
        for c, r in zip(commands, recorded):
            assert type(c) is type(r)
            if isinstance(c, Steps):
                np.testing.assert_array_equal(c.actions, r.actions)
        return outcomes


def online_setup(config):
    world_model = artifacts.load_world_model(config)
    stats = artifacts.caches(config)["training"].stats
    schedule, actor_pre = artifacts.load_policy(config, TASK)
    models = FrozenModels(wm=world_model.params, classifier={}, actor_pre=actor_pre, schedule=schedule)
    spec = stage.online_spec(config, TASK)
    state = create_learner_state(spec.finetune, jax.random.key(3), actor_pre, config.derived.latent_dim)
    counting = [CountingEnv(specs.make_env(config)) for _ in range(config.online.envs)]
    envs = SimulatorBatch.local(counting, observation_transform(world_model, stats, config.data.image_size))
    starts = simulator_start_states(config, TASK, config.ppo.n_start_states, 0)
    return world_model, models, spec, state, counting, envs, starts


def test_online_iteration_counts_steps_and_replays_to_the_offline_update(main_job):
    config = tiny(main_job, envs=3)
    world_model, models, spec, state, counting, envs, starts = online_setup(config)
    recording = Recording(envs)
    try:
        after, metrics, counts = online_lib.online_iteration(
            spec, models, world_model, state, task=TASK, envs=recording,
            next_start=stage.start_sampler(config, TASK, 0, 0, starts))
    finally:
        for env in counting:
            env.env.close()
    # every simulator step and reset is counted, and nothing else
    assert counts.sim_steps == sum(e.steps for e in counting) > 0
    assert counts.resets == sum(e.resets for e in counting) >= config.online.envs
    executed = sum(len(o.observations) for commands, outcomes in recording.log for c, o in zip(commands, outcomes)
                   if isinstance(c, Steps))
    assert executed == counts.sim_steps
    assert counts.sim_steps <= config.derived.online_max_sim_steps_per_iteration
    assert int(after.step) == 1 and float(metrics["updates"]) > 0

    # the simulators replaced by the recorded trajectory: the same rollout and the same update
    replay_rollout, replay_counts = online_lib.collect_rollout(
        spec, models, world_model, state.actor, jax.random.split(state.key, 3)[0], task=TASK,
        envs=Replay(recording.log), next_start=stage.start_sampler(config, TASK, 0, 0, starts))
    assert replay_counts == counts
    offline_update = jax.jit(learn, static_argnums=0)  # what offline fine-tuning runs after imagining
    replayed, replay_metrics = offline_update(spec.finetune, models, state, jax.tree.map(jnp.asarray, replay_rollout))
    assert_same(replayed, after)
    assert {k: float(v) for k, v in replay_metrics.items()} == {k: float(v) for k, v in metrics.items()}

    # the rollout is the recorded trajectory: rewards and terminations are the oracle's successes of each
    # chunk step, old log-probs those of the stored chains under the sampling params
    steps_rounds = [(c, o) for c, o in recording.log if all(isinstance(x, Steps) for x in c)]
    assert len(steps_rounds) == spec.finetune.rollout.n_steps
    successes = np.array([[o.success for o in outcomes] for _, outcomes in steps_rounds])
    np.testing.assert_array_equal(replay_rollout.terminated, successes)
    np.testing.assert_array_equal(replay_rollout.rewards, successes.astype(np.float32))
    r = spec.finetune.rollout
    flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
    recomputed = chain_logprob(state.actor, models.schedule, flat(replay_rollout.features), flat(replay_rollout.chains),
                               ft_steps=r.ft_steps, min_logprob_std=r.min_logprob_std, denoised_clip=r.denoised_clip)
    np.testing.assert_allclose(np.asarray(recomputed), flat(replay_rollout.logprobs), rtol=1e-5, atol=1e-5)
    # executed chunks are the policy's chunks with the gripper binarised (what evaluation sends)
    gripper = np.concatenate([c.actions[:, 6] for commands, _ in steps_rounds for c in commands])
    assert set(np.unique(gripper)) <= {-1.0, 1.0}


def online_state(config):
    spec = stage.online_spec(config, TASK)
    _, actor_pre = artifacts.load_policy(config, TASK)
    template = create_learner_state(spec.finetune, jax.random.key(0), actor_pre, config.derived.latent_dim)
    with Checkpointer(os.path.join(artifacts.run_dir(config, "online", TASK, 0), "checkpoints")) as ck:
        return ck.latest_step(), restore_state(ck, template)


def test_online_stage_writes_curves_and_resumes_exactly(main_job, tmp_path, monkeypatch):
    uninterrupted = tmp_path / "a"
    shutil.copytree(main_job, uninterrupted)
    config = tiny(uninterrupted)
    pipeline.run(config, ["online"])
    curve = artifacts.read_curve(config, TASK, 0, "online")
    assert [e["iteration"] for e in curve] == list(range(config.online.iterations + 1))
    sim_steps = [e["sim_steps"] for e in curve]
    assert sim_steps[0] == 0 and all(b > a for a, b in zip(sim_steps, sim_steps[1:]))
    assert sim_steps[-1] <= config.online.iterations * config.derived.online_max_sim_steps_per_iteration
    evaluated = [e["iteration"] for e in curve if e["real_success"] is not None]
    assert evaluated == [0, 2, 3]  # eval_every 2 and the end
    with open(uninterrupted / "online" / "online_vs_diwa.json") as f:
        row = json.load(f)["runs"][f"{TASK}/seed0"]
    assert row["diwa_success"] == artifacts.read_curve(config, TASK, 0)[-1]["real_success"]
    assert row["online_sim_steps"] == sim_steps[-1] and row["diwa_sim_steps"] == 0
    assert row["online_steps_to_match_diwa"] == stage.steps_to_match(curve, row["diwa_success"])
    assert (uninterrupted / "online" / "online_vs_diwa.png").stat().st_size > 0
    results = json.loads((uninterrupted / "results.json").read_text())["tasks"][TASK]
    final = row["final_list"]  # the evaluate stage's numbers for the policies it evaluated, on the same list
    assert final["episodes"] == results["episodes"]
    assert final["pretrained"]["rate"] == results["pretrained"]["rate"]
    assert final["finetuned"]["rate"] == results["finetuned"][0]["rate"]
    standalone = subprocess.run([sys.executable, "-m", "diwa_jax.stages.evaluate", "--workdir", str(uninterrupted),
                                 "--task", TASK, "--policy", "online"], capture_output=True, text=True, cwd=REPO)
    assert standalone.returncode == 0, standalone.stderr
    online_rate = json.loads(standalone.stdout.strip().splitlines()[-1])
    assert online_rate["rate"] == final["online"]["rate"] and online_rate["episodes"] == final["episodes"]
    assert final["online_minus_diwa"]["difference"] == pytest.approx(final["online"]["rate"] - final["finetuned"]["rate"])
    marker = json.loads((uninterrupted / "online" / pipeline.MARKER).read_text())
    assert marker["summary"]["sim_steps"] == sim_steps[-1]

    killed = tmp_path / "b"
    shutil.copytree(main_job, killed)
    config_b = tiny(killed)
    save = Checkpointer.save

    def killed_before_checkpoint_2(self, step, items, **kwargs):
        if step == 2 and "online" in str(self.directory):
            raise KeyboardInterrupt
        return save(self, step, items, **kwargs)

    monkeypatch.setattr(Checkpointer, "save", killed_before_checkpoint_2)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(config_b, ["online"])
    monkeypatch.setattr(Checkpointer, "save", save)
    assert online_state(config_b)[0] == 1
    pipeline.run(config_b, ["online"])
    (step_a, a), (step_b, b) = online_state(config), online_state(config_b)
    assert step_a == step_b == config.online.iterations
    assert_same(a, b)
    assert artifacts.read_curve(config_b, TASK, 0, "online") == curve


def test_online_is_not_part_of_the_main_job_and_checks_its_keys(main_job):
    assert not (main_job / "online").exists()
    with pytest.raises(configlib.ConfigError, match="config.online.workers"):
        tiny(main_job, envs=2, workers=3)
    with pytest.raises(configlib.ConfigError, match="config.online.tasks"):
        tiny(main_job, tasks=("open_drawer",))
    with pytest.raises(configlib.ConfigError, match="config.online.init"):
        tiny(main_job, init="best")


def test_offline_then_online_starts_from_diwas_policy(main_job, tmp_path, monkeypatch):
    run = tmp_path / "c"
    shutil.copytree(main_job, run)
    config = tiny(run, init="finetuned", iterations=1)
    evaluated = []
    call = stage.PeriodicEvaluation.__call__

    def spy(self, actor):
        evaluated.append(jax.device_get(actor))
        return call(self, actor)

    monkeypatch.setattr(stage.PeriodicEvaluation, "__call__", spy)
    pipeline.run(config, ["online"])
    _, actor_pre = artifacts.load_policy(config, TASK)
    diwa = artifacts.load_finetuned_actor(config, TASK, 0)
    assert not all(np.array_equal(x, y) for x, y in zip(leaves(diwa), leaves(actor_pre)))
    assert_same(evaluated[0], diwa)  # iteration 0 is DiWA's fine-tuned policy, not the pre-trained one
    assert artifacts.read_curve(config, TASK, 0, "online")[0]["real_success"] == \
        artifacts.read_curve(config, TASK, 0)[-1]["real_success"]  # the same policy on the same periodic list


def test_online_learner_split_over_devices_equals_one_device(main_job):
    """`ppo.devices=0` splits the rollout's simulators and every PPO minibatch over the 8 fake CPU devices: the
    same iteration as on one device, up to the reassociation of cross-device sums."""
    assert jax.device_count() == 8
    config = tiny(main_job, envs=8)
    world_model, models, spec, state, counting, envs, starts = online_setup(config)
    c = get_config("tiny")
    c.online.envs, c.ppo.devices = 8, 0
    update = stage.mesh_update(configlib.finalize(c, str(main_job)), spec, models, state)
    assert stage.mesh_update(config, spec, models, state) is None and update is not None
    runs = []
    try:
        for step in (None, update):
            runs.append(online_lib.online_iteration(spec, models, world_model, state, task=TASK, envs=envs,
                                                    next_start=stage.start_sampler(config, TASK, 0, 0, starts),
                                                    update=step))
    finally:
        for env in counting:
            env.env.close()
    (one, metrics_one, counts_one), (split, metrics_split, counts_split) = runs
    assert counts_one == counts_split  # the same rollout: the learner's devices do not reach the simulators
    assert len(jax.tree.leaves(split.actor)[0].sharding.device_set) == 8
    for x, y in zip(leaves(one), leaves(split)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    for k in metrics_one:
        np.testing.assert_allclose(float(metrics_one[k]), float(metrics_split[k]), rtol=1e-4, atol=1e-5)


def test_online_speed_benchmark_reports_consistent_figures(main_job):
    out = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "online_speed.py"), "--workdir",
                          str(main_job), "--settings", "2x0", "--iterations", "1"], capture_output=True, text=True,
                         cwd=REPO, timeout=600, env=dict(os.environ, PYTHONPATH=REPO))
    assert out.returncode == 0, out.stderr[-3000:]
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["setting"] == "2x0" and line["task"] == TASK
    assert 0 < line["sim_steps_per_iteration"] <= 2 * 3 * 4  # envs x ppo.n_steps x act_steps
    assert line["rollout_steps_per_s"] >= line["steps_per_s"] > 0 and 0 < line["rollout_share"] <= 1
