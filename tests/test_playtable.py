"""The embedded play-table: exact resets, action scaling, articulation logic, cameras, kinematics."""
import numpy as np
import pytest
from PIL import Image

from diwa_jax.envs import protocol as P
from diwa_jax.envs.playtable.env import PlayTable
from diwa_jax.envs.playtable.robot import PandaKinematics
from diwa_jax.envs.geometry import sample_scene_obs
from diwa_jax.envs.playtable.scene import GEOMETRY


@pytest.fixture(scope="module")
def env():
    e = PlayTable(render=False, seed=0)
    yield e
    e.close()


def _quiet_scene(**joints):
    """Articulations as given; blocks parked inside the cabinet, away from every test motion."""
    s = np.zeros(P.SCENE_OBS_DIM)
    for name, value in joints.items():
        s[{"slider": P.SLIDER, "drawer": P.DRAWER, "switch": P.SWITCH, "lightbulb": P.LIGHTBULB, "led": P.LED}[name]] = value
    for i, x in enumerate((-0.2, -0.08, 0.04)):
        s[6 + 6 * i : 12 + 6 * i] = [x, 0.2, 0.48, 0.0, 0.0, 0.0]
    return s


def _move(env, obs, goal, steps, gripper=-1.0):
    """CALVIN's waypoint controller (calvin_conventions.md section 6): a = clip((goal - tcp)/0.02)."""
    for _ in range(steps):
        pos = np.clip((np.asarray(goal) - obs[P.ROBOT_OBS][:3]) / 0.02, -1, 1)
        obs, info = env.step(np.concatenate([pos, [0, 0, 0, gripper]]))
    return obs


def _hold(env, obs, steps):
    for _ in range(steps):
        obs, _ = env.step(np.array([0, 0, 0, 0, 0, 0, obs[P.ROBOT_OBS][P.GRIPPER_ACTION]]))
    return obs


def test_neutral_reset_matches_calvin(env):
    assert isinstance(env, P.Simulator)
    obs = env.reset(scene_obs=_quiet_scene())
    np.testing.assert_allclose(obs[P.ROBOT_OBS][:3], P.NEUTRAL_ROBOT_OBS[:3], atol=2e-4)
    np.testing.assert_allclose(obs[P.ROBOT_OBS][3:6], P.NEUTRAL_ROBOT_OBS[3:6], atol=2e-3)
    np.testing.assert_allclose(obs[P.ROBOT_OBS][6:], P.NEUTRAL_ROBOT_OBS[6:], atol=1e-7)
    np.testing.assert_array_equal(obs[P.SCENE_OBS][:6], np.zeros(6))
    assert set(obs) == {P.ROBOT_OBS, P.SCENE_OBS}  # render=False: no images
    for key in (P.ROBOT_OBS, P.SCENE_OBS):
        assert obs[key].dtype == np.float64
    assert obs[P.ROBOT_OBS].shape == (15,) and obs[P.SCENE_OBS].shape == (24,)


def test_reset_restores_exact_state_and_replays_identically(env):
    rng = np.random.default_rng(0)
    actions = np.concatenate([rng.uniform(-1, 1, (40, 6)), rng.choice([-1.0, 1.0], (40, 1))], axis=1)
    actions[:, 2] = -0.6  # drive into the table and blocks: contacts must replay too
    env.reset(scene_obs=sample_scene_obs(GEOMETRY, np.random.default_rng(3)))
    states = []
    for a in actions:
        obs, _ = env.step(a)
        states.append((obs[P.ROBOT_OBS], obs[P.SCENE_OBS]))
    mid_robot, mid_scene = states[15]
    restored = env.reset(mid_robot, mid_scene)
    np.testing.assert_allclose(restored[P.ROBOT_OBS], mid_robot, atol=1e-9)
    np.testing.assert_allclose(restored[P.SCENE_OBS], mid_scene, atol=1e-9)

    def rollout():
        obs = env.reset(mid_robot, mid_scene)
        out = [np.concatenate([obs[P.ROBOT_OBS], obs[P.SCENE_OBS]])]
        for a in actions[16:]:
            obs, _ = env.step(a)
            out.append(np.concatenate([obs[P.ROBOT_OBS], obs[P.SCENE_OBS]]))
        return np.array(out)

    np.testing.assert_array_equal(rollout(), rollout())


def test_a_reset_state_replays_as_in_a_fresh_simulator_whatever_ran_before():
    """Episodes that leave the blocks resting where the next start has them: the solver's contact cache from
    before the reset must not reach the next episode (it did, in 2 of these 10, before resets built a fresh world)."""
    rng = np.random.default_rng(0)
    actions = np.concatenate([rng.uniform(-1, 1, (60, 6)), rng.choice([-1.0, 1.0], (60, 1))], axis=1)
    actions[:, 2] = -0.6  # into the table and the blocks
    used = PlayTable(render=False)

    def rollout(env, robot, scene):
        env.reset(robot, scene)
        return np.array([np.concatenate([obs[P.ROBOT_OBS], obs[P.SCENE_OBS]])
                         for obs in (env.step(a)[0] for a in actions[:20])])

    try:
        for k in range(10):
            obs = used.reset(scene_obs=sample_scene_obs(GEOMETRY, np.random.default_rng(k)))
            for a in actions:
                obs, _ = used.step(a)
            start = (P.NEUTRAL_ROBOT_OBS, obs[P.SCENE_OBS])  # the scene as this episode left it
            fresh = PlayTable(render=False)
            try:
                np.testing.assert_array_equal(rollout(used, *start), rollout(fresh, *start), err_msg=f"history {k}")
            finally:
                fresh.close()
    finally:
        used.close()


def test_relative_actions_accumulate_on_the_target(env):
    obs = env.reset(scene_obs=_quiet_scene())
    start = env.target_pose
    np.testing.assert_allclose(start, obs[P.ROBOT_OBS][:6], atol=1e-12)  # reset resyncs the target
    rel = np.array([0.5, -0.25, 0.0, 0.2, 0.0, -0.4, 1.0])
    for k in range(1, 6):
        env.step(rel)
        expected = start + k * np.array([0.01, -0.005, 0.0, 0.01, 0.0, -0.02])
        np.testing.assert_allclose(env.target_pose, expected, atol=1e-12)
    env.step(np.array([3.0, 0, 0, 0, 0, 0, 1.0]))  # clipped to 1 -> 0.02 m
    np.testing.assert_allclose(env.target_pose[0], start[0] + 5 * 0.01 + 0.02, atol=1e-12)
    obs = _hold(env, obs, 25)
    np.testing.assert_allclose(obs[P.ROBOT_OBS][:3], env.target_pose[:3], atol=4e-3)
    np.testing.assert_allclose(P.wrap_to_pi(obs[P.ROBOT_OBS][3:6] - env.target_pose[3:6]), 0.0, atol=0.01)


def test_blocked_arm_builds_target_error(env):
    obs = env.reset(scene_obs=_quiet_scene())
    obs = _move(env, obs, (-0.3, -0.05, 0.52), 30)
    z_target = env.target_pose[2]
    for _ in range(15):
        obs, _ = env.step(np.array([0, 0, -1.0, 0, 0, 0, -1.0]))
    assert env.target_pose[2] == pytest.approx(z_target - 0.3, abs=1e-12)
    assert obs[P.ROBOT_OBS][2] > 0.45  # the fingers rest on the table top (z = 0.46)


def test_step_rejects_bad_actions(env):
    env.reset(scene_obs=_quiet_scene())
    with pytest.raises(ValueError, match="exactly -1 or \\+1"):
        env.step(np.array([0, 0, 0, 0, 0, 0, 0.5]))
    with pytest.raises(ValueError, match="\\(7,\\)"):
        env.step(np.zeros(6))


def test_drawer_and_slider_follow_calvin_test_waypoints(env):
    obs = env.reset(scene_obs=_quiet_scene())
    for goal, steps in (((0.18, -0.215, 0.50), 12), ((0.18, -0.215, 0.36), 10), ((0.18, -0.40, 0.36), 15)):
        obs = _move(env, obs, goal, steps)
    assert obs[P.SCENE_OBS][P.DRAWER] > 0.12
    obs = _move(env, obs, (0.18, -0.40, 0.50), 10)  # let go of the handle
    drawer = obs[P.SCENE_OBS][P.DRAWER]
    obs = _hold(env, obs, 15)
    assert abs(obs[P.SCENE_OBS][P.DRAWER] - drawer) < 1e-3  # joint friction holds it

    obs = env.reset(scene_obs=_quiet_scene())
    for goal, steps in (((0.09, -0.06, 0.62), 12), ((0.09, 0.015, 0.62), 6), ((0.09, 0.015, 0.55), 6), ((-0.25, 0.015, 0.55), 25)):
        obs = _move(env, obs, goal, steps)
    assert obs[P.SCENE_OBS][P.SLIDER] > 0.15
    assert obs[P.SCENE_OBS][P.SLIDER] < P.SLIDER_RANGE[1] + 0.01


def test_switch_turns_on_bulb_with_calvin_like_waypoints(env):
    # calvin_conventions.md 6: (0.30,0,0.60) -> (0.30,0,0.52) -> (0.30,0.12,0.52); our switch sits
    # 0.05 m toward -x and 0.13 m toward -y (in CALVIN it is at the edge of the arm's reach).
    obs = env.reset(scene_obs=_quiet_scene())
    for goal, steps in (((0.25, -0.19, 0.60), 16), ((0.25, -0.19, 0.50), 6), ((0.25, -0.07, 0.50), 12)):
        obs = _move(env, obs, goal, steps)
    assert obs[P.SCENE_OBS][P.SWITCH] > P.SWITCH_TRIGGER and obs[P.SCENE_OBS][P.LIGHTBULB] == 1.0


def test_button_toggles_led_once_per_press(env):
    obs = env.reset(scene_obs=_quiet_scene(led=0.0))
    above, pressed = (-0.12, -0.12, 0.56), (-0.12, -0.12, 0.455)
    obs = _move(env, obs, above, 12)
    obs = _move(env, obs, pressed, 8)
    assert obs[P.SCENE_OBS][P.BUTTON] > P.BUTTON_TRIGGER
    assert obs[P.SCENE_OBS][P.LED] == 1.0
    obs = _hold(env, obs, 10)  # holding the button down does not toggle again
    assert obs[P.SCENE_OBS][P.BUTTON] > P.BUTTON_TRIGGER and obs[P.SCENE_OBS][P.LED] == 1.0
    obs = _move(env, obs, above, 8)
    assert obs[P.SCENE_OBS][P.BUTTON] < P.BUTTON_TRIGGER  # the spring pushed it back
    assert obs[P.SCENE_OBS][P.LED] == 1.0
    obs = _move(env, obs, pressed, 8)
    assert obs[P.SCENE_OBS][P.LED] == 0.0
    _, info = env.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))
    assert info["scene_info"]["lights"]["led"]["logical_state"] == 0
    assert info["scene_info"]["buttons"]["base__button"]["logical_state"] == 1


def test_button_poke_between_updates_does_not_register(env):
    obs = env.reset(scene_obs=_quiet_scene(led=0.0))
    env._p.resetJointState(env.scene.body, env.scene.button, 0.015)  # poked, then released
    obs, _ = env.step(np.array([0, 0, 0, 0, 0, 0, 1.0]))
    assert obs[P.SCENE_OBS][P.BUTTON] < P.BUTTON_TRIGGER
    assert obs[P.SCENE_OBS][P.LED] == 0.0


def test_switch_is_level_triggered_and_reset_keeps_it_consistent(env):
    obs = env.reset(scene_obs=_quiet_scene(switch=0.06, lightbulb=1.0))
    obs = _hold(env, obs, 10)
    assert obs[P.SCENE_OBS][P.SWITCH] == pytest.approx(0.06, abs=1e-3)  # friction holds it on the incline
    assert obs[P.SCENE_OBS][P.LIGHTBULB] == 1.0
    for q, bulb in ((0.03, 0.0), (0.05, 1.0), (0.05, 1.0), (0.02, 0.0)):
        env._p.resetJointState(env.scene.body, env.scene.switch, q)
        obs, info = env.step(np.array([0, 0, 0, 0, 0, 0, 1.0]))
        assert obs[P.SCENE_OBS][P.LIGHTBULB] == bulb
        assert info["scene_info"]["lights"]["lightbulb"]["logical_state"] == bulb
    # inconsistent switch/bulb pairs are fixed the way CALVIN's evaluation does
    obs = env.reset(scene_obs=_quiet_scene(switch=0.0, lightbulb=1.0))
    assert obs[P.SCENE_OBS][P.SWITCH] == pytest.approx(P.SWITCH_RANGE[1]) and obs[P.SCENE_OBS][P.LIGHTBULB] == 1.0
    obs = env.reset(scene_obs=_quiet_scene(switch=0.07, lightbulb=0.0))
    assert obs[P.SCENE_OBS][P.SWITCH] == 0.0 and obs[P.SCENE_OBS][P.LIGHTBULB] == 0.0
    obs = _hold(env, obs, 3)
    assert obs[P.SCENE_OBS][P.LIGHTBULB] == 0.0


def test_numpy_kinematics_match_the_simulator(env):
    kinematics = PandaKinematics()
    rng = np.random.default_rng(1)
    for _ in range(5):
        robot = P.NEUTRAL_ROBOT_OBS.copy()
        robot[P.ARM_JOINTS] += rng.normal(0, 0.2, 7)
        obs = env.reset(robot, _quiet_scene())
        pos, orn = kinematics.tcp_pose(robot[P.ARM_JOINTS])
        np.testing.assert_allclose(obs[P.ROBOT_OBS][:3], pos, atol=1e-6)
        np.testing.assert_allclose(P.wrap_to_pi(obs[P.ROBOT_OBS][3:6] - orn), 0.0, atol=1e-5)


def test_abs_rel_helpers_follow_calvin_scaling():
    robot = P.NEUTRAL_ROBOT_OBS.copy()
    actions = np.concatenate([robot[:3] + [0.01, -0.03, 0.0], robot[3:6] + [0.025, -0.1, 2 * np.pi - 0.01], [0.0]])
    rel = P.abs_to_rel(actions, robot)
    np.testing.assert_allclose(rel, [0.5, -1.0, 0.0, 0.5, -1.0, -0.2, -1.0], atol=1e-9)
    in_range = np.array([0.3, -0.7, 1.0, -0.2, 0.9, 0.0, 1.0])
    np.testing.assert_allclose(P.abs_to_rel(P.rel_to_abs(in_range, robot[:6]), robot), in_range, atol=1e-9)
    np.testing.assert_array_equal(P.binarize_gripper([0.0, 1e-3, -0.2]), [-1.0, 1.0, -1.0])


def test_cameras_render_distinct_nonblank_images_and_lights_change_colour():
    env = PlayTable(static_size=200, gripper_size=84, seed=1)
    try:
        off = env.reset(scene_obs=_quiet_scene())
        assert off[P.RGB_STATIC].shape == (200, 200, 3) and off[P.RGB_STATIC].dtype == np.uint8
        assert off[P.RGB_GRIPPER].shape == (84, 84, 3) and off[P.RGB_GRIPPER].dtype == np.uint8
        for key in (P.RGB_STATIC, P.RGB_GRIPPER):
            assert off[key].std() > 20, f"{key} looks blank"
        gripper_up = np.asarray(Image.fromarray(off[P.RGB_GRIPPER]).resize((200, 200)), dtype=np.float64)
        assert np.abs(gripper_up - off[P.RGB_STATIC]).mean() > 20
        on = env.reset(scene_obs=_quiet_scene(switch=0.088, lightbulb=1.0, led=1.0))

        def count(img, channel):  # strongly coloured pixels: green LED, yellow bulb (red+green)
            img = img.astype(int)
            if channel == "green":
                return int(((img[..., 1] > 150) & (img[..., 0] < 100) & (img[..., 2] < 100)).sum())
            return int(((img[..., 0] > 180) & (img[..., 1] > 150) & (img[..., 2] < 80)).sum())

        for channel in ("green", "yellow"):
            assert count(on[P.RGB_STATIC], channel) > count(off[P.RGB_STATIC], channel) + 4, channel
    finally:
        env.close()


def test_envs_in_one_process_are_independent(env):
    other = PlayTable(render=False, seed=5)
    try:
        a = env.reset(scene_obs=_quiet_scene())
        b = other.reset(scene_obs=_quiet_scene())
        for _ in range(5):
            a, _ = env.step(np.array([1.0, 0, 0, 0, 0, 0, 1.0]))
        b = other.get_obs()
        np.testing.assert_allclose(b[P.ROBOT_OBS], other.reset(scene_obs=_quiet_scene())[P.ROBOT_OBS])
        assert a[P.ROBOT_OBS][0] > b[P.ROBOT_OBS][0] + 0.05
    finally:
        other.close()


def test_egl_renderer_matches_tiny_renderer_roughly():
    """EGL (llvmpipe here) and TinyRenderer draw the same scene; CALVIN measured about 21/255 apart."""
    scene = _quiet_scene(switch=0.088, lightbulb=1.0, led=1.0)
    images = {}
    for renderer in ("egl", "tiny"):
        env = PlayTable(static_size=96, gripper_size=48, renderer=renderer)
        try:
            images[renderer] = env.reset(scene_obs=scene)
        finally:
            env.close()
    for key in (P.RGB_STATIC, P.RGB_GRIPPER):
        assert images["egl"][key].std() > 20, f"egl {key} looks blank"
        assert np.abs(images["egl"][key].astype(int) - images["tiny"][key]).mean() < 50
    with pytest.raises(ValueError, match="unknown renderer"):
        PlayTable(renderer="vulkan")
