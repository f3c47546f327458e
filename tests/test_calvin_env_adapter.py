"""calvin_env adapter against a fake calvin_env package (the real one: test_calvin_env_real.py); with the
calvin_env backend, fine-tuning's simulator start pool is the training windows' first states, reset and rendered by
calvin_env."""
import importlib.util
import sys
import types
from pathlib import Path

import jax
import numpy as np
import pytest

from diwa_jax import artifacts, specs
from diwa_jax import config as configlib
from diwa_jax.data import calvin_format as cf
from diwa_jax.envs import calvin_env as adapter_module
from diwa_jax.envs import tasks
from diwa_jax.envs.calvin_env import CalvinEnvAdapter, consistent_scene_obs
from diwa_jax.errors import DataError
from diwa_jax.stages import finetune as finetune_stage
from diwa_jax.world_model import model
from experiments.calvin import get_config

NEUTRAL_ROBOT_OBS = np.array([0.02586889, -0.2313129, 0.5712808, 3.09045411, -0.02908596, 1.50013585, 0.07999963,
                              -1.21779124, 1.03987629, 2.11978254, -2.34205014, -0.87015899, 1.64119093, 0.55344928, 1.0])

# A conf tree shaped like calvin_env's: defaults with no cameras, VR on and colorlog job logging.
CONF = {
    "config_data_collection.yaml": """
defaults:
  - cameras: no_cameras
  - env: play_table_env
  - scene: calvin_scene_D_eval
  - robot: panda
  - override hydra/job_logging: colorlog
  - _self_
seed: 0
use_vr: true
""",
    "env/play_table_env.yaml": """
_target_: calvin_env.envs.play_table_env.PlayTableSimEnv
_recursive_: false
robot_cfg: ${robot}
seed: ${seed}
use_vr: ${use_vr}
bullet_time_step: 240.0
cameras: ${cameras}
show_gui: false
scene_cfg: ${scene}
use_scene_info: false
use_egl: true
control_freq: 30
""",
    "cameras/no_cameras.yaml": "{}\n",
    "cameras/static_and_gripper.yaml": "static: {width: 200}\ngripper: {width: 84}\n",
    "cameras/all.yaml": "static: {width: 200}\ngripper: {width: 84}\ntactile: {width: 120}\n",
    "scene/calvin_scene_D.yaml": "name: D\n",
    "scene/calvin_scene_D_eval.yaml": "name: D_eval\n",
    "robot/panda.yaml": "name: panda\n",
    "robot/panda_longer_finger.yaml": "name: panda_longer_finger\n",
}


class FakePlayTableSimEnv:
    """Records how it was built and called; asserts the gripper and fails a second disconnect like calvin_env does."""

    def __init__(self, robot_cfg, seed, use_vr, bullet_time_step, cameras, show_gui, scene_cfg, use_scene_info,
                 use_egl, control_freq=30):
        module = sys.modules["calvin_env.envs.play_table_env"]
        self.commit = module.get_git_commit_hash(Path(module.__file__))
        self.config = dict(robot=robot_cfg["name"], seed=seed, use_vr=use_vr, cameras=set(cameras), scene=scene_cfg["name"],
                           use_scene_info=use_scene_info, use_egl=use_egl)
        self.resets, self.actions, self.closes = [], [], 0
        module.instances.append(self)

    def __del__(self):
        self.close()

    def _obs(self):
        rng = np.random.default_rng([len(self.resets), len(self.actions)])  # every reset renders its own frame
        return {
            "rgb_obs": {"rgb_static": rng.integers(0, 256, (200, 200, 3)).astype(np.uint8),
                        "rgb_gripper": rng.integers(0, 256, (84, 84, 3)).astype(np.uint8)},
            "depth_obs": {"depth_static": np.zeros((200, 200), np.float32), "depth_gripper": np.zeros((84, 84), np.float32)},
            "robot_obs": NEUTRAL_ROBOT_OBS.astype(np.float32),  # float32 in, float64 out
            "scene_obs": np.arange(24.0),
        }

    def reset(self, robot_obs=None, scene_obs=None):
        self.resets.append((robot_obs, scene_obs))
        return self._obs()

    def step(self, action):
        assert action[-1] in (-1, 1), "gripper action must be -1 or 1"
        self.actions.append(np.array(action))
        return self._obs(), 0, False, self.get_info()

    def get_info(self):
        return {"robot_info": {"uid": 1}, "scene_info": {"lights": {}}}

    def get_state_obs(self):
        return {k: v for k, v in self._obs().items() if k in ("robot_obs", "scene_obs")}

    def close(self):
        self.closes += 1
        if self.closes > 1:
            raise RuntimeError("Not connected to physics server.")


def _not_a_checkout(path):
    raise RuntimeError(f"InvalidGitRepositoryError: {path}")


@pytest.fixture
def fake_calvin_env(tmp_path, monkeypatch):
    """Injects calvin_env, calvin_env.envs and calvin_env.envs.play_table_env into sys.modules."""
    for name, text in CONF.items():
        (tmp_path / "conf" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "conf" / name).write_text(text)
    package = types.ModuleType("calvin_env")
    package.__file__ = str(tmp_path / "calvin_env" / "__init__.py")  # conf/ is beside the package
    package.__path__ = [str(tmp_path / "calvin_env")]
    envs = types.ModuleType("calvin_env.envs")
    envs.__path__ = []
    play_table_env = types.ModuleType("calvin_env.envs.play_table_env")
    play_table_env.__file__ = str(tmp_path / "calvin_env" / "envs" / "play_table_env.py")
    play_table_env.PlayTableSimEnv = FakePlayTableSimEnv
    play_table_env.get_git_commit_hash = _not_a_checkout
    play_table_env.instances = []
    package.envs, envs.play_table_env = envs, play_table_env
    for module in (package, envs, play_table_env):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return play_table_env


def test_missing_package_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "calvin_env", None)  # makes `import calvin_env` fail
    with pytest.raises(ImportError) as info:
        CalvinEnvAdapter()
    msg = str(info.value)
    assert "never `pip install calvin`" in msg and "git clone https://github.com/mees/calvin_env.git" in msg
    assert "pip install --no-deps -e calvin_env" in msg and "diwa-jax[calvin]" in msg


def test_construction_overrides_and_git_hash_workaround(fake_calvin_env):
    adapter = CalvinEnvAdapter(use_egl=False, seed=5)
    (env,) = fake_calvin_env.instances
    assert env.config == dict(robot="panda_longer_finger", seed=5, use_vr=False, cameras={"static", "gripper"},
                              scene="D", use_scene_info=True, use_egl=False)
    assert env.commit == "not-a-git-checkout"
    assert fake_calvin_env.get_git_commit_hash is _not_a_checkout  # restored after construction
    CalvinEnvAdapter(use_egl=True)
    assert fake_calvin_env.instances[1].config["use_egl"] is True
    adapter.close()
    assert env.closes == 1


def test_close_is_idempotent_and_del_does_not_disconnect_again(fake_calvin_env):
    adapter = CalvinEnvAdapter(use_egl=False)
    (env,) = fake_calvin_env.instances
    adapter.close()
    adapter.close()
    env.__del__()  # calvin_env's __del__ closes again: a second disconnect would raise
    assert env.closes == 1


def test_camera_sizes_become_calvin_env_overrides():
    overrides = adapter_module.calvin_env_overrides(use_egl=False, static_size=96, gripper_size=64)
    assert {"++cameras.static.width=96", "++cameras.static.height=96",
            "++cameras.gripper.width=64", "++cameras.gripper.height=64"} <= set(overrides)


def test_missing_conf_dir(fake_calvin_env, tmp_path):
    with pytest.raises(FileNotFoundError, match="config_data_collection.yaml"):
        CalvinEnvAdapter(conf_dir=tmp_path / "nowhere")


def test_obs_flattening_and_gripper_binarisation(fake_calvin_env):
    adapter = CalvinEnvAdapter(use_egl=False)
    env = fake_calvin_env.instances[0]
    obs = adapter.reset(robot_obs=NEUTRAL_ROBOT_OBS)
    assert set(obs) == {"rgb_static", "rgb_gripper", "robot_obs", "scene_obs"}
    assert obs["rgb_static"].shape == (200, 200, 3) and obs["rgb_gripper"].shape == (84, 84, 3)
    assert obs["robot_obs"].dtype == np.float64 and obs["scene_obs"].shape == (24,)
    np.testing.assert_allclose(obs["robot_obs"], NEUTRAL_ROBOT_OBS, rtol=1e-6)
    np.testing.assert_array_equal(env.resets[0][0], NEUTRAL_ROBOT_OBS)
    assert env.resets[0][1] is None
    for gripper, sent in [(0.3, 1.0), (-0.2, -1.0), (0.0, 1.0), (-1.0, -1.0), (1.7, 1.0)]:
        action = np.array([0.1, -0.2, 0.3, -0.4, 0.5, -0.6, gripper], np.float32)
        obs, info = adapter.step(action)
        np.testing.assert_allclose(env.actions[-1][:6], action[:6])
        assert env.actions[-1][6] == sent and action[6] == np.float32(gripper)  # the caller's array is untouched
        assert set(obs) == {"rgb_static", "rgb_gripper", "robot_obs", "scene_obs"}
    with pytest.raises(ValueError, match="7-D"):
        adapter.step(np.zeros(6))


def test_step_clips_motion_and_refuses_non_finite_actions(fake_calvin_env):
    adapter = CalvinEnvAdapter(use_egl=False)
    env = fake_calvin_env.instances[0]
    adapter.step(np.array([3.0, -2.0, 1.0, -1.0, 0.5, -1.5, 2.0]))
    np.testing.assert_array_equal(env.actions[-1], [1.0, -1.0, 1.0, -1.0, 0.5, -1.0, 1.0])
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="finite") as info:
            adapter.step(np.array([0.0, bad, 0, 0, 0, 0, 1]))
        assert str(bad) in str(info.value)  # names the action
    assert len(env.actions) == 1


def test_info_holds_the_state_vectors_like_the_play_tables(fake_calvin_env):
    adapter = CalvinEnvAdapter(use_egl=False)
    obs, info = adapter.step(np.zeros(7))
    for got in (info, adapter.get_info()):
        assert set(got) == {"robot_info", "scene_info", "robot_obs", "scene_obs"}
        for key in ("robot_obs", "scene_obs"):
            assert got[key].dtype == np.float64
            np.testing.assert_array_equal(got[key], obs[key])
    assert info["robot_obs"] is not obs["robot_obs"] and info["scene_obs"] is not obs["scene_obs"]


@pytest.mark.parametrize("switch, bulb, sent", [(0.02, 1.0, 0.088), (0.06, 0.0, 0.0), (0.01, 0.0, 0.01), (0.088, 1.0, 0.088)])
def test_lightbulb_switch_consistency_on_reset(fake_calvin_env, switch, bulb, sent):
    adapter = CalvinEnvAdapter(use_egl=False)
    scene = np.zeros(24)
    scene[3], scene[4] = switch, bulb
    adapter.reset(scene_obs=scene)
    got = fake_calvin_env.instances[0].resets[0][1]
    assert got[3] == sent and got[4] == bulb and scene[3] == switch
    np.testing.assert_array_equal(np.delete(got, 3), np.delete(scene, 3))


@pytest.mark.parametrize("bulb, led, sent_bulb, sent_led, sent_switch",
                         [(0.7, 0.7, 1.0, 1.0, 0.088), (0.5, 0.5, 0.0, 0.0, 0.0), (0.3, 0.9, 0.0, 1.0, 0.0),
                          (1.0, 0.0, 1.0, 0.0, 0.088)])
def test_lights_binarized_on_reset_as_the_oracle_reads_them(bulb, led, sent_bulb, sent_led, sent_switch):
    scene = np.zeros(24)
    scene[3:6] = [0.06, bulb, led]
    got = consistent_scene_obs(scene)
    np.testing.assert_array_equal(got[3:6], [sent_switch, sent_bulb, sent_led])
    assert tasks.success("turn_on_lightbulb", np.zeros(24), scene) == (sent_bulb == 1.0)
    assert tasks.success("turn_on_led", np.zeros(24), scene) == (sent_led == 1.0)
    assert scene[4] == bulb  # the caller's array is untouched


def test_colorlog_fallback_matches_installation():
    colorlog = importlib.util.find_spec("hydra_plugins") is not None and \
        importlib.util.find_spec("hydra_plugins.hydra_colorlog") is not None
    overrides = adapter_module.calvin_env_overrides(use_egl=True)
    assert ("hydra/job_logging=default" in overrides) != colorlog
    assert overrides[:6] == ["cameras=static_and_gripper", "scene=calvin_scene_D", "robot=panda_longer_finger",
                             "use_vr=false", "env.use_egl=true", "env.use_scene_info=true"]


def calvin_config(tmp_path, training_tasks):
    """The tiny preset on the calvin_env backend over a small synthetic data set; training windows of 8 frames
    take ``training_tasks`` in turn."""
    root = tmp_path / "data"
    cf.write_synthetic_split(root / "training", [[0, 39], [40, 79]], tasks=training_tasks, window=8, seed=1)
    cf.write_synthetic_split(root / "validation", [[0, 15]], window=8, seed=2)
    c = get_config("tiny")
    c.env.backend, c.eval.start_source, c.data.path = "calvin_env", "validation", str(root)
    return configlib.finalize(c, str(tmp_path / "run"))


class RecordingEnv:
    """The frames a simulator returned on reset, in order."""

    def __init__(self, env):
        self.env, self.frames = env, []

    def reset(self, robot_obs=None, scene_obs=None):
        self.frames.append(self.env.reset(robot_obs=robot_obs, scene_obs=scene_obs))
        return self.frames[-1]


def test_calvin_env_start_pool_is_the_training_windows_first_states(fake_calvin_env, tmp_path, monkeypatch):
    from diwa_jax.envs.playtable import skills

    def no_play_table(*args):
        raise AssertionError("the play-table's start sampler was used with the calvin_env backend")

    monkeypatch.setattr(skills, "sample_start_state", no_play_table)
    config = calvin_config(tmp_path, ("move_slider_left", "open_drawer"))
    task, n = config.tasks[0], config.ppo.n_start_states
    # the first frames of the task's training windows, read from the files
    split = cf.CalvinSplit(artifacts.data_split_dir(config, "training"))
    firsts = [split.load_frame(int(f), keys=("robot_obs", "scene_obs")) for f in split.task_windows(task)[:, 0]]
    assert len(firsts) == 5 > n  # enough windows: drawn without replacement
    rows = np.random.default_rng([config.seed, tasks.stream(task), finetune_stage.START_STREAM, 0]).choice(
        len(firsts), size=n, replace=False)

    world_model = model.WorldModel(params=model.init_params(jax.random.key(0), specs.world_model_spec(config)),
                                   spec=specs.world_model_spec(config))
    stats = artifacts.caches(config)["training"].stats
    env = RecordingEnv(specs.make_env(config))
    pool, described = finetune_stage.build_start_pool(config, task, 0, world_model, stats, env)
    (sim,) = fake_calvin_env.instances
    assert len(sim.resets) == n and not sim.actions
    for (robot, scene), row in zip(sim.resets, rows):
        np.testing.assert_array_equal(robot, firsts[row]["robot_obs"])
        np.testing.assert_array_equal(scene, consistent_scene_obs(firsts[row]["scene_obs"]))  # the adapter's switch rule
    np.testing.assert_array_equal(described["robot_obs"], [firsts[r]["robot_obs"] for r in rows])
    expected = finetune_stage.encode_start_frames(world_model, stats, env.frames,
                                                  configlib.stage_key(config, f"finetune/{task}/seed0/start_pool"),
                                                  config.data.image_size)
    np.testing.assert_array_equal(pool.deter, expected.deter)
    np.testing.assert_array_equal(pool.stoch, expected.stoch)

    # more starts than windows: drawn with replacement from the same stream
    robot, _ = finetune_stage.simulator_start_states(config, task, 7, 1)
    rows = np.random.default_rng([config.seed, tasks.stream(task), finetune_stage.START_STREAM, 1]).choice(
        len(firsts), size=7, replace=True)
    np.testing.assert_array_equal(robot, [firsts[r]["robot_obs"] for r in rows])


def test_calvin_env_start_pool_of_a_task_without_training_windows(fake_calvin_env, tmp_path):
    config = calvin_config(tmp_path, ("open_drawer", "close_drawer"))
    with pytest.raises(DataError) as info:
        finetune_stage.build_start_pool(config, config.tasks[0], 0, None, None, None)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(artifacts.data_split_dir(config, "training"))
    assert f"'{config.tasks[0]}'" in msg and "config.tasks" in msg

