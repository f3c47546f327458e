"""Closed-loop evaluation: simulator frames reach the world model exactly as the data cache stores them,
the episode loop filters each frame with the action that produced it, binarises the gripper, stops on
oracle success or at max_steps, and a tiny random policy runs in the play-table with consistent counts,
deterministically, without recompiling."""
import jax
import numpy as np
import pytest

from diwa_jax import config as configlib
from diwa_jax import artifacts, evaluate, specs
from diwa_jax.data import calvin_format as cf
from diwa_jax.data.batching import RESET_ACTION
from diwa_jax.data.preprocess import build_dataset_cache, compute_norm_stats, load_cache
from diwa_jax.envs.playtable.env import PlayTable
from diwa_jax.policy.denoiser import init_denoiser
from diwa_jax.stages.start_lists import validation_starts
from diwa_jax.world_model import model


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
        obs = evaluate.wm_observation(frame, cache.stats)
        for camera in ("rgb_static", "rgb_gripper"):
            assert obs[camera].shape == (64, 64, 3) and obs[camera].dtype == np.uint8
            np.testing.assert_array_equal(obs[camera], getattr(cache, camera)[row])
        np.testing.assert_allclose(obs["proprio"], cache.proprio[row], rtol=0, atol=1e-6)
        np.testing.assert_allclose(obs["state"], cache.state[row], rtol=0, atol=1e-6)
        assert obs["proprio"].shape == (18,) and obs["state"].shape == (51,)

    robot, scene = validation_starts(split, cache, "open_drawer")  # windows 0-7 and 16-23
    np.testing.assert_array_equal(robot, cache.robot_obs[[0, 16]])
    np.testing.assert_array_equal(scene, [split.load_frame(f, keys=("scene_obs",))["scene_obs"] for f in (0, 16)])


class DrawerEnv:
    """A stand-in simulator: every step moves the drawer by ``rate``; it records the actions it gets."""

    def __init__(self, rate: float):
        self.rate = rate
        self.actions = []

    def reset(self, robot_obs=None, scene_obs=None):
        self.t, self.scene = 0, np.array(scene_obs, np.float64)
        return self._obs()

    def step(self, action):
        self.actions.append(np.array(action))
        self.t += 1
        self.scene[1] += self.rate
        return self._obs(), {}

    def _obs(self):
        return {"scene_obs": self.scene.copy(), "t": self.t}


GRIPPERS = np.array([0.5, -0.5, 0.0, -1e-4])  # -> +1, -1, +1 (>= 0 opens), -1


def recording_loop(log):
    def observe(latent, action, obs, frame):
        log.append(("observe", latent, tuple(action), obs["t"], frame))
        return f"L{frame}"

    def predict(latent, action, frame):
        log.append(("predict", latent, tuple(action), frame))
        return f"P{frame}"

    def act(latent, chunk):
        log.append(("act", latent, chunk))
        actions = np.full((4, 7), 0.1 * chunk)
        actions[:, 0] += np.arange(4)  # tells the actions apart (6 dims are passed through unclipped)
        actions[:, 6] = GRIPPERS
        return actions

    return evaluate.ClosedLoop(observe=observe, predict=predict, act=act)


def action(chunk, i):
    a = np.full(7, 0.1 * chunk)
    a[0] += i
    a[6] = (1.0, -1.0, 1.0, -1.0)[i]
    return tuple(a)


def test_episode_filters_each_frame_with_its_action_and_stops_on_success():
    env, log = DrawerEnv(rate=0.05), []
    success, steps = evaluate.run_episode(env, np.zeros(15), np.zeros(24), "open_drawer", recording_loop(log),
                                          act_steps=4, max_steps=20)
    assert (success, steps) == (True, 3)  # drawer +0.15 > 0.12 after the 3rd step, +0.10 before
    assert log == [
        ("observe", None, tuple(RESET_ACTION), 0, 0),
        ("act", "L0", 0),
        ("observe", "L0", action(0, 0), 1, 1),
        ("observe", "L1", action(0, 1), 2, 2),
    ]
    assert [tuple(a) for a in env.actions] == [action(0, i) for i in range(3)]


def test_episode_without_success_runs_max_steps_and_predicts_unobserved_frames():
    env, log = DrawerEnv(rate=0.05), []
    success, steps = evaluate.run_episode(env, np.zeros(15), np.zeros(24), "close_drawer", recording_loop(log),
                                          act_steps=4, max_steps=10, filter_every_frame=False)
    assert (success, steps) == (False, 10) and len(env.actions) == 10
    expected = [("observe", None, tuple(RESET_ACTION), 0, 0)]
    latent = "L0"
    for frame in range(1, 10):
        chunk, i = divmod(frame - 1, 4)
        if i == 0:
            expected.append(("act", latent, chunk))
        if i == 3:
            expected.append(("observe", latent, action(chunk, i), frame, frame))
            latent = f"L{frame}"
        else:
            expected.append(("predict", latent, action(chunk, i), frame))
            latent = f"P{frame}"
    assert log == expected  # frame 10 ends the episode before it is filtered


def test_random_policy_in_the_playtable(config):
    env = PlayTable(static_size=config.env.static_size, gripper_size=config.env.gripper_size, renderer="tiny", seed=1)
    resets = [env.reset() for _ in range(3)]
    robot = np.stack([o["robot_obs"] for o in resets])
    scene = np.stack([o["scene_obs"] for o in resets])
    stats = compute_norm_stats(robot + np.linspace(-0.1, 0.1, 3)[:, None], scene, rot6d=True, source="test")
    spec = specs.world_model_spec(config)
    world_model = model.WorldModel(params=model.init_params(jax.random.key(0), spec), spec=spec)
    actor = init_denoiser(jax.random.key(1), specs.denoiser_spec(config), spec.feature_dim)
    schedule = specs.policy_schedule(config)
    kwargs = dict(episodes=2, key=jax.random.key(2), env=env, world_model=world_model, stats=stats,
                  starts=(robot, scene))
    result = evaluate.evaluate_policy(specs.eval_spec(config), "open_drawer", schedule, actor, actor, **kwargs)
    assert result["episodes"] == 2
    assert 2 <= result["sim_steps"] <= 2 * config.eval.max_steps
    if result["successes"] == 0:  # a random policy almost surely fails: every episode runs to the limit
        assert result["sim_steps"] == 2 * config.eval.max_steps
    assert result["success_rate"] == result["successes"] / 2
    assert result["mean_steps"] == result["sim_steps"] / 2

    compiled = (evaluate.filter_frame._cache_size(), evaluate.sample_action_chunk._cache_size())
    again = evaluate.evaluate_policy(specs.eval_spec(config), "open_drawer", schedule, actor, actor, **kwargs)
    assert again == result  # same key and start states: the same episodes
    assert (evaluate.filter_frame._cache_size(), evaluate.sample_action_chunk._cache_size()) == compiled
    with pytest.raises(ValueError, match="no start states"):
        evaluate.evaluate_policy(specs.eval_spec(config), "open_drawer", schedule, actor, actor,
                                 **{**kwargs, "starts": (robot[:0], scene[:0])})
    env.close()
