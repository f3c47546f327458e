"""Closed-loop evaluation: simulator frames reach the world model exactly as the data cache stores them; a
simulator batch stops a chunk on the task's success; batched episodes equal the one-episode loop written out
plainly (same outcomes, same actions: each frame filtered with the action that produced it, the gripper
binarised, stop on oracle success or at max_steps, with and without filtering every frame); a tiny random
policy in the play-table gives the same episodes on one in-process simulator and on worker processes,
deterministically, without recompiling; worker failures are reported."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diwa_jax import config as configlib
from diwa_jax import artifacts, evaluate, specs
from diwa_jax.data import calvin_format as cf
from diwa_jax.data.batching import RESET_ACTION
from diwa_jax.data.preprocess import build_dataset_cache, compute_norm_stats, load_cache, wm_observation
from diwa_jax.envs import protocol as P
from diwa_jax.envs.batch import Reset, SimulatorBatch, Steps
from diwa_jax.envs import tasks
from diwa_jax.envs.playtable.env import PlayTable
from diwa_jax.policy.denoiser import init_denoiser
from diwa_jax.stages.start_lists import window_starts
from diwa_jax.world_model import model
from experiments.calvin import get_config


@pytest.fixture
def config(tiny_config, tmp_path):
    tiny_config.eval.max_steps = 8
    return configlib.finalize(tiny_config, str(tmp_path))


def test_wm_observation_equals_the_cached_frame_and_start_states(config, tmp_path):
    root = tmp_path / "data"
    cf.write_synthetic_split(root / "training", [[0, 15], [16, 31]], tasks=("open_drawer", "close_drawer"),
                             window=8, static_size=200, gripper_size=84, seed=3)
    paths = build_dataset_cache(root, tmp_path / "cache", splits=("training",), workers=1, progress=False)
    cache = load_cache(paths["training"])
    split = cf.CalvinSplit(root / "training")
    for row in (0, 7, 30):
        frame = split.load_frame(int(cache.frame_ids[row]))
        obs = wm_observation(frame, cache.stats)
        for camera in ("rgb_static", "rgb_gripper"):
            assert obs[camera].shape == (64, 64, 3) and obs[camera].dtype == np.uint8
            np.testing.assert_array_equal(obs[camera], getattr(cache, camera)[row])
        np.testing.assert_allclose(obs["proprio"], cache.proprio[row], rtol=0, atol=1e-6)
        np.testing.assert_allclose(obs["state"], cache.state[row], rtol=0, atol=1e-6)
        assert obs["proprio"].shape == (18,) and obs["state"].shape == (51,)

    robot, scene = window_starts(split, cache, "open_drawer")  # windows 0-7 and 16-23
    np.testing.assert_array_equal(robot, cache.robot_obs[[0, 16]])
    np.testing.assert_array_equal(scene, [split.load_frame(f, keys=("scene_obs",))["scene_obs"] for f in (0, 16)])


class DrawerEnv:
    """A stand-in simulator: every step moves the drawer by ``0.05 * robot_obs[0]`` of its start state; frames
    change with the step count and the drawer; it records each episode's actions under ``scene_obs[6]``."""

    def __init__(self, size: int = 64):
        self.size, self.actions = size, {}

    def reset(self, robot_obs=None, scene_obs=None):
        self.t, self.robot, self.scene = 0, np.array(robot_obs, np.float64), np.array(scene_obs, np.float64)
        self.log = self.actions.setdefault(int(self.scene[6]), [])
        return self._obs()

    def step(self, action):
        self.log.append(np.array(action))
        self.t += 1
        self.scene[1] += 0.05 * self.robot[0]
        return self._obs(), {}

    def _obs(self):
        image = np.full((self.size, self.size, 3), (37 * self.t + int(100 * self.scene[1])) % 256, np.uint8)
        image[: self.t % self.size] = 255 - image[: self.t % self.size]
        return {"scene_obs": self.scene.copy(), "robot_obs": self.robot.copy(), "rgb_static": image,
                "rgb_gripper": image[::-1].copy()}

    def close(self):
        pass


def test_batch_steps_stop_on_the_task_success_and_apply_the_transform():
    batch = SimulatorBatch.local([DrawerEnv(), DrawerEnv()], transform=lambda obs: {"t": obs["rgb_static"][-1, 0, 0]})
    with pytest.raises(RuntimeError, match="before the simulator's first Reset"):
        batch.run([Steps(np.zeros((1, 7))), None])
    robot = np.zeros(15)
    robot[0] = 1.0
    first = batch.run([Reset(robot, np.zeros(24)), Reset(robot, np.zeros(24))])
    assert [len(o.observations) for o in first] == [1, 1] and not first[0].success
    actions = np.zeros((4, 7))
    opening, closing = batch.run([Steps(actions, "open_drawer"), Steps(actions, "close_drawer")])
    assert (opening.success, len(opening.observations)) == (True, 3)  # +0.15 > 0.12 after the 3rd step
    assert (closing.success, len(closing.observations)) == (False, 4)
    assert [o["t"] for o in opening.observations] == [42, 84, 126]  # the transform ran on every frame
    assert batch.run([None, Steps(actions[:1])])[0] is None
    with pytest.raises(ValueError, match="2 simulators"):
        batch.run([None])


def _models(config, seed: int = 0):
    spec = specs.world_model_spec(config)
    world_model = model.WorldModel(params=model.init_params(jax.random.key(seed), spec), spec=spec)
    actor = init_denoiser(jax.random.key(seed + 1), specs.denoiser_spec(config), spec.feature_dim)
    return world_model, actor


def reference_episode(config, env, robot, scene, episode, task, *, world_model, actor, stats, key):
    """The one-episode closed loop written out plainly (unbatched): success and the steps used."""
    spec = specs.eval_spec(config)
    obs_key, act_key = evaluate.episode_keys(key, episode)
    obs = env.reset(robot_obs=robot, scene_obs=scene)
    start = obs["scene_obs"].copy()
    latent = evaluate.encode_observation(world_model, stats, obs, None, RESET_ACTION, obs_key, 0, spec.image_size)
    steps, chunk = 0, 0
    while True:
        actions = evaluate.sample_action_chunk(actor, actor, specs.policy_schedule(config), latent.feature(), act_key,
                                               np.int32(chunk), settings=spec.sampler)
        chunk += 1
        for i in range(spec.act_steps):
            action = evaluate.executed_actions(np.asarray(actions[i]))
            obs, _ = env.step(action)
            steps += 1
            if tasks.success(task, start, obs["scene_obs"]):
                return True, steps
            if steps >= spec.max_steps:
                return False, steps
            if spec.filter_every_frame or i == spec.act_steps - 1:
                latent = evaluate.encode_observation(world_model, stats, obs, latent, action, obs_key, steps,
                                                     spec.image_size)
            else:
                latent = evaluate.predict_frame(world_model.params, latent, np.float32(action), obs_key,
                                                np.int32(steps), spec=world_model.spec)


@pytest.mark.parametrize("filter_every_frame", [True, False])
def test_batched_episodes_equal_the_one_episode_loop(tiny_config, tmp_path, filter_every_frame):
    tiny_config.eval.max_steps = 10
    tiny_config.eval.filter_every_frame = filter_every_frame
    config = configlib.finalize(tiny_config, str(tmp_path))
    world_model, actor = _models(config)
    robot, scene = np.zeros((5, 15)), np.zeros((5, 24))
    robot[:, 0] = [1.0, 0.0, 1.0, 0.5, 0.0]  # episodes 0 and 2 reach open_drawer on their 3rd step, 3 on its 5th
    scene[:, 6] = np.arange(5)  # tells the episodes apart in the simulators' logs
    stats = compute_norm_stats(robot + np.linspace(-0.1, 0.1, 5)[:, None], scene, rot6d=True, source="test")
    key = jax.random.key(3)
    common = dict(world_model=world_model, actor=actor, stats=stats, key=key)
    reference_env = DrawerEnv()
    expected = [reference_episode(config, reference_env, robot[e], scene[e], e, "open_drawer", **common)
                for e in range(5)]
    assert [success for success, _ in expected] == [True, False, True, True, False]
    assert [steps for _, steps in expected] == [3, 10, 3, 5, 10]

    envs = [DrawerEnv(), DrawerEnv()]
    batch = SimulatorBatch.local(envs, evaluate.observation_transform(world_model, stats, config.data.image_size))
    result = evaluate.evaluate_policy(specs.eval_spec(config), "open_drawer", specs.policy_schedule(config), actor,
                                      actor, key=key, world_model=world_model, starts=(robot, scene), envs=batch)
    assert result["episode_success"] == [success for success, _ in expected]
    assert result["episode_steps"] == [steps for _, steps in expected]
    assert result["sim_steps"] == 31 and result["successes"] == 3 and result["episodes"] == 5
    executed = {e: log for env in envs for e, log in env.actions.items()}
    assert sorted(executed) == list(range(5))
    for e in range(5):  # the same actions, so the same latents filtered from the same frames
        np.testing.assert_allclose(np.stack(executed[e]), np.stack(reference_env.actions[e]), atol=1e-5)
        assert set(np.stack(executed[e])[:, 6]) <= {-1.0, 1.0}


@pytest.mark.parametrize("filter_every_frame", [True, False])
def test_an_episodes_latents_and_chunks_are_bit_identical_whatever_the_batch(tmp_path, filter_every_frame):
    # quick-sized models: XLA's batched kernels round differently from E = 1 at these widths
    quick = configlib.finalize(get_config("quick"), str(tmp_path))
    world_model, actor = _models(quick)
    env, rng, count, horizon = PlayTable(static_size=96, gripper_size=64, seed=2), np.random.default_rng(0), 5, 4
    starts = [env.reset() for _ in range(count)]
    stats = compute_norm_stats(np.stack([o["robot_obs"] for o in starts]) + np.linspace(-0.1, 0.1, count)[:, None],
                               np.stack([o["scene_obs"] for o in starts]), rot6d=True, source="test")
    transform = evaluate.observation_transform(world_model, stats, 64)
    actions = rng.uniform(-1, 1, (count, horizon, 7)).astype(np.float32)
    frames = []
    for e, start in enumerate(starts):
        env.reset(start["robot_obs"], start["scene_obs"])
        frames.append([transform(env.step(evaluate.executed_actions(a))[0]) for a in actions[e]])
    env.close()
    latent = jax.tree.map(lambda x: x + jnp.asarray(rng.normal(size=x.shape), x.dtype),
                          evaluate.initial_latents(count, world_model.spec))
    key, rows = jax.random.key(4), np.arange(count)

    def filtered(episodes):
        step = evaluate.ChunkFrames(len(episodes), horizon, frames[0][0], filter_every_frame)
        for s, e in enumerate(episodes):
            for i in range(horizon - (e == 3)):  # episode 3 ends a frame early: its last frame is masked
                step.add(s, i, actions[e, i], frames[e][i], i + 1)
        return step.filter(world_model, jax.tree.map(lambda x: x[np.asarray(episodes)], latent), key, np.asarray(episodes))

    batched = filtered(list(rows))
    chunks = evaluate.sample_chunks(actor, actor, specs.policy_schedule(quick), batched, key, rows.astype(np.int32),
                                    np.full(count, 2, np.int32), settings=specs.eval_spec(quick).sampler)
    for e in rows:
        alone = filtered([e])
        for both, one in zip(jax.tree.leaves(batched), jax.tree.leaves(alone)):
            np.testing.assert_array_equal(np.asarray(both)[e], np.asarray(one)[0])
        chunk = evaluate.sample_chunks(actor, actor, specs.policy_schedule(quick), alone, key, np.array([e], np.int32),
                                       np.array([2], np.int32), settings=specs.eval_spec(quick).sampler)
        np.testing.assert_array_equal(np.asarray(chunks)[e], np.asarray(chunk)[0])


def test_random_policy_in_the_playtable_on_workers_equals_one_simulator(config):
    env = PlayTable(static_size=config.env.static_size, gripper_size=config.env.gripper_size, renderer="tiny", seed=1)
    resets = [env.reset() for _ in range(4)]
    robot = np.stack([o["robot_obs"] for o in resets])
    scene = np.stack([o["scene_obs"] for o in resets])
    stats = compute_norm_stats(robot + np.linspace(-0.1, 0.1, 4)[:, None], scene, rot6d=True, source="test")
    world_model, actor = _models(config)
    schedule, transform = specs.policy_schedule(config), evaluate.observation_transform(world_model, stats, 64)
    kwargs = dict(key=jax.random.key(2), world_model=world_model, starts=(robot, scene))
    one = SimulatorBatch.local([env], transform)
    result = evaluate.evaluate_policy(specs.eval_spec(config), "open_drawer", schedule, actor, actor, **kwargs, envs=one)
    assert result["episodes"] == 4
    assert 4 <= result["sim_steps"] <= 4 * config.eval.max_steps
    if result["successes"] == 0:  # a random policy almost surely fails: every episode runs to the limit
        assert result["sim_steps"] == 4 * config.eval.max_steps
    assert result["success_rate"] == result["successes"] / 4
    assert result["mean_steps"] == result["sim_steps"] / 4

    compiled = (evaluate.filter_frames._cache_size(), evaluate.sample_chunks._cache_size())
    again = evaluate.evaluate_policy(specs.eval_spec(config), "open_drawer", schedule, actor, actor, **kwargs, envs=one)
    assert again == result  # same key and start states: the same episodes
    assert (evaluate.filter_frames._cache_size(), evaluate.sample_chunks._cache_size()) == compiled

    workers = SimulatorBatch.spawn(specs.env_factory(config), 3, 2, transform)
    try:
        spread = evaluate.evaluate_policy(specs.eval_spec(config), "open_drawer", schedule, actor, actor, **kwargs,
                                          envs=workers)
        assert spread["episode_success"] == result["episode_success"]
        assert spread["episode_steps"] == result["episode_steps"]
        with pytest.raises(RuntimeError, match="a simulator worker failed:(.|\n)*PlayTable.step: rel_action"):
            workers.run([Steps(np.full((1, 7), np.nan)), None, None])
        processes = [process for process, _ in workers._workers]
    finally:
        workers.close()
    assert not any(process.is_alive() for process in processes)
    with pytest.raises(ValueError, match="no start states"):
        evaluate.evaluate_policy(specs.eval_spec(config), "open_drawer", schedule, actor, actor, envs=one,
                                 **{**kwargs, "starts": (robot[:0], scene[:0])})
    env.close()


def test_a_worker_that_dies_is_reported(config):
    batch = SimulatorBatch.spawn(specs.env_factory(config), 2, 2)
    try:
        batch._workers[1][0].kill()
        batch._workers[1][0].join()
        with pytest.raises(RuntimeError, match="worker process died"):
            batch.run([Reset(P.NEUTRAL_ROBOT_OBS, np.zeros(24)), Reset(P.NEUTRAL_ROBOT_OBS, np.zeros(24))])
    finally:
        batch.close()
