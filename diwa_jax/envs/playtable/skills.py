"""Scripted skills of the registered tasks (``envs/tasks``), emitting CALVIN's 7-D relative actions.

A skill is a list of TCP waypoints followed by a proportional controller like the test waypoints
of ``calvin_conventions.md`` section 6, ``a_pos = (goal - tcp) / (1.5 MAX_POS)`` with its norm
limited to the style's speed; the orientation is steered to a fixed goal (the neutral TCP
orientation, ``clip(wrap(goal - orn) / MAX_ORN)``), the gripper follows each waypoint's command.
Approach waypoints end when reached and the TCP has slowed down, ``push`` waypoints (the contact
phase) also end when the TCP stops making progress (a joint limit, a pressed-down button), so the
commanded target never builds up much error.

``style`` turns the clean expert into human-like play: slower or faster moves, approach offsets,
orientation offsets, action noise, hesitations, an open gripper while approaching, and deliberate
failures (stopping before or partway through the contact phase). ``style=None`` is the clean expert.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from diwa_jax.envs import protocol as P
from diwa_jax.envs import tasks
from diwa_jax.envs.geometry import SceneGeometry, sample_scene_obs
from diwa_jax.envs.playtable.waypoint import Waypoint
from diwa_jax.envs.playtable.robot import ARM_LOWER, ARM_UPPER, FINGER_OPEN, NEUTRAL_JOINTS, PandaKinematics

NEUTRAL_ORN = np.asarray(P.NEUTRAL_ROBOT_OBS[P.TCP_ORN])
REACH_TOL = 0.012  # m, an approach waypoint counts as reached ...
SETTLE_MOTION = 0.005  # m/step, ... once the TCP has also slowed down (the commanded target leads it)
STALL_STEPS = 4  # a push waypoint ends after this many steps with < STALL_PROGRESS progress
STALL_PROGRESS = 0.003
MAX_WAYPOINT_STEPS = 45
FAIL_FRACTION = (0.05, 0.3)  # share of the contact phase a failing skill performs (below every threshold)
POS_GAIN_DISTANCE = 1.5  # in units of MAX_POS: full speed until the goal is closer than this


@dataclass(frozen=True)
class Style:
    """Human-play variation of one skill execution (all zeros/ones = the clean expert)."""

    speed: float = 1.0  # action clip (1 = full speed)
    offset_std: float = 0.0  # m, Gaussian offset of approach waypoints (not of the contact line)
    orn_std: float = 0.0  # rad, Gaussian offset of the orientation goal
    action_noise: float = 0.0  # std of Gaussian noise on the position/orientation action parts
    pause_prob: float = 0.0  # per step, chance to start a hesitation
    pause_steps: tuple[int, int] = (2, 8)  # hesitation length range
    open_approach: bool = False  # approach with the gripper open, close before contact
    fail: bool = False  # deliberately stop before or partway through the contact phase


def sample_style(rng: np.random.Generator, noise: float, fail: bool = False) -> Style:
    """A random play style; ``noise`` in [0, 1] scales all variations (0 = clean expert)."""
    if noise <= 0:
        return Style(fail=fail)
    return Style(
        speed=float(np.clip(1.0 - noise * rng.uniform(0.0, 1.2), 0.35, 1.0)),
        offset_std=0.02 * noise,
        orn_std=0.15 * noise,
        action_noise=0.3 * noise,
        pause_prob=0.05 * noise,
        open_approach=bool(rng.random() < 0.5 * noise),
        fail=fail,
    )


def _skill(task: str) -> tasks.Skill:
    skill = tasks.get(task).skill
    if skill is None:
        raise ValueError(f"task {task!r} has no scripted skill; scripted tasks: {', '.join(tasks.scripted())}")
    return skill


def precondition(task: str, scene_obs: np.ndarray) -> bool:
    """True when ``task`` is not done yet and can succeed from this scene (e.g. the drawer is not open)."""
    return bool(_skill(task).precondition(np.asarray(scene_obs)))


class WaypointSkill:
    """Follows waypoints with a proportional controller; ``act(obs)`` until ``finished``."""

    def __init__(self, waypoints: list[Waypoint], rng: np.random.Generator, style: Style, orn_goal: np.ndarray):
        self._waypoints = waypoints
        self._rng = rng
        self._style = style
        self._orn_goal = orn_goal
        self._index = 0
        self._goal: np.ndarray | None = None
        self._steps = 0
        self._history: list[float] = []
        self._last_tcp: np.ndarray | None = None
        self._pause = 0
        self.finished = not waypoints

    def _activate(self, tcp: np.ndarray) -> None:
        w = self._waypoints[self._index]
        self._goal = tcp + np.asarray(w.goal) if w.relative else np.asarray(w.goal, dtype=np.float64)
        self._steps = 0
        self._history = []

    def _advance_if_done(self, tcp: np.ndarray) -> None:
        while not self.finished:
            if self._goal is None:
                self._activate(tcp)
            w = self._waypoints[self._index]
            dist = float(np.linalg.norm(self._goal - tcp))
            self._history.append(dist)
            stalled = w.push and len(self._history) > STALL_STEPS and self._history[-1 - STALL_STEPS] - dist < STALL_PROGRESS
            moving = self._last_tcp is not None and np.linalg.norm(tcp - self._last_tcp) > SETTLE_MOTION
            settling = moving and not (w.push or w.relative)  # approach points must not be overshot
            if (dist > REACH_TOL or settling) and not stalled and self._steps < MAX_WAYPOINT_STEPS:
                return
            self._index += 1
            self._goal = None
            self.finished = self._index >= len(self._waypoints)

    def act(self, obs: P.Obs) -> np.ndarray:
        """The next 7-D relative action (gripper exactly +-1)."""
        robot = obs[P.ROBOT_OBS]
        tcp, orn = robot[P.TCP_POS], robot[P.TCP_ORN]
        self._advance_if_done(tcp)
        self._last_tcp = tcp
        if self.finished:
            return np.array([0, 0, 0, 0, 0, 0, robot[P.GRIPPER_ACTION]], dtype=np.float64)
        style = self._style
        w = self._waypoints[self._index]
        next_is_contact = self._index + 1 < len(self._waypoints) and self._waypoints[self._index + 1].push
        approaching = not (w.push or w.relative or next_is_contact)
        gripper = 1.0 if style.open_approach and approaching else w.gripper
        if self._pause == 0 and style.pause_prob > 0 and self._rng.random() < style.pause_prob:
            self._pause = int(self._rng.integers(style.pause_steps[0], style.pause_steps[1] + 1))
        if self._pause > 0:
            self._pause -= 1
            return np.array([0, 0, 0, 0, 0, 0, gripper], dtype=np.float64)
        self._steps += 1
        # Proportional with the speed limit on the vector norm: the arm tracks 0.02 m/step along one
        # axis but lags far behind per-axis saturation on a diagonal (the target then overshoots).
        pos = (self._goal - tcp) / (P.MAX_POS * POS_GAIN_DISTANCE)
        pos = pos * min(1.0, style.speed / max(float(np.linalg.norm(pos)), 1e-9))
        orn_goal = self._orn_goal + np.array([0.0, w.pitch, 0.0])
        rot = np.clip(P.wrap_to_pi(orn_goal - orn) / P.MAX_ORN, -style.speed, style.speed)
        motion = np.concatenate([pos, rot])
        if style.action_noise > 0:
            motion = motion + self._rng.normal(0.0, style.action_noise, 6)
        return np.concatenate([np.clip(motion, -1.0, 1.0), [gripper]])


def _build(task: str, obs: P.Obs, rng: np.random.Generator, style: Style, frac: float,
           geometry: SceneGeometry) -> WaypointSkill:
    offsets = rng.normal(0.0, style.offset_std, 3) if style.offset_std > 0 else np.zeros(3)  # of the approach
    waypoints = _skill(task).waypoints(geometry, np.asarray(obs[P.SCENE_OBS]), frac, rng, offsets)
    if frac == 0.0:  # give up before contact, somewhere on the approach
        waypoints = [w for w in waypoints if not w.push][: int(rng.integers(1, 3))]
    return WaypointSkill(waypoints, rng, style, _orientation_goal(rng, style))


def _orientation_goal(rng: np.random.Generator, style: Style) -> np.ndarray:
    return NEUTRAL_ORN + (rng.normal(0.0, style.orn_std, 3) if style.orn_std > 0 else 0.0)


def make_skill(task: str, obs: P.Obs, rng: np.random.Generator, geometry: SceneGeometry,
               style: Style | None = None) -> WaypointSkill:
    """A skill for ``task`` from the current observation in a scene of ``geometry`` (the simulator's
    ``geometry``); raises if the task is already done/impossible."""
    scene_obs = np.asarray(obs[P.SCENE_OBS])
    if not precondition(task, scene_obs):
        raise ValueError(f"make_skill: precondition of {task!r} does not hold for scene_obs[:6] = {scene_obs[:6]}")
    style = style or Style()
    frac = 1.0
    if style.fail:
        # Deliberate failure: stop before contact, or push only a part of the needed way.
        frac = 0.0 if rng.random() < 0.5 else float(rng.uniform(*FAIL_FRACTION))
    return _build(task, obs, rng, style, frac, geometry)


def nudge_tasks(scene_obs: np.ndarray) -> list[str]:
    """Door/drawer motions with at least 3 cm of room left (done or not)."""
    s = np.asarray(scene_obs)
    nudges = [(t, tasks.get(t).skill.nudge) for t in tasks.scripted()]
    return [t for t, room in nudges if room is not None and room[1] * (room[2] - s[room[0]]) > 0.03]


def nudge_skill(task: str, obs: P.Obs, rng: np.random.Generator, geometry: SceneGeometry,
                style: Style | None = None) -> WaypointSkill:
    """Moves the drawer or door part of the way (20-80 % of the room left), whatever the task state.

    Play needs these: a door left between the thresholds (e.g. the slider at 0.14 m) admits neither
    of its tasks until something moves it.
    """
    if task not in nudge_tasks(obs[P.SCENE_OBS]):
        raise ValueError(f"nudge_skill: {task!r} has no room to move in scene_obs[:2] = {np.asarray(obs[P.SCENE_OBS])[:2]}")
    return _build(task, obs, rng, style or Style(), float(rng.uniform(0.2, 0.8)), geometry)


def free_motion(rng: np.random.Generator, style: Style | None = None, n_waypoints: int = 1) -> WaypointSkill:
    """Random moves through the free workspace above the table (play between tasks)."""
    style = style or Style()
    waypoints = [
        Waypoint(
            (rng.uniform(-0.25, 0.25), rng.uniform(-0.35, -0.08), rng.uniform(0.52, 0.68)),
            gripper=float(rng.choice([-1.0, 1.0])),
        )
        for _ in range(n_waypoints)
    ]
    return WaypointSkill(waypoints, rng, style, _orientation_goal(rng, style))


# ---- start states ------------------------------------------------------------------------------------

START_JOINT_STD = 0.12  # rad, noise on CALVIN's neutral joints
START_TCP_BOX = ((-0.15, 0.15), (-0.34, -0.12), (0.53, 0.66))  # clear of desk, blocks and cabinet

@functools.lru_cache(maxsize=1)
def _kinematics() -> PandaKinematics:
    return PandaKinematics()


def sample_robot_obs(rng: np.random.Generator) -> np.ndarray:
    """A random robot state near CALVIN's neutral one (joint noise, TCP kept in a free box)."""
    for _ in range(1000):
        joints = np.clip(NEUTRAL_JOINTS + rng.normal(0.0, START_JOINT_STD, 7), ARM_LOWER, ARM_UPPER)
        pos, orn = _kinematics().tcp_pose(joints)
        if all(lo <= v <= hi for v, (lo, hi) in zip(pos, START_TCP_BOX)):
            gripper = float(rng.choice([-1.0, 1.0]))
            width = 2 * FINGER_OPEN if gripper > 0 else 0.0
            return np.concatenate([pos, orn, [width], joints, [gripper]])
    raise RuntimeError("sample_robot_obs: no joint sample put the TCP inside START_TCP_BOX")


def sample_start_state(task: str, rng: np.random.Generator, geometry: SceneGeometry) -> tuple[np.ndarray, np.ndarray]:
    """A random ``(robot_obs, scene_obs)`` in a scene of ``geometry`` from which ``task`` is not done yet
    (other parts random)."""
    scene_obs = sample_scene_obs(geometry, rng, **tasks.get(task).start_scene(rng))
    return sample_robot_obs(rng), scene_obs
