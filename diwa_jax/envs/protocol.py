"""The simulator interface and CALVIN's state/action conventions.

Every simulator backend (the embedded play-table, the optional ``calvin_env`` adapter) implements
:class:`Simulator`. Observations are a flat dict (CALVIN nests the images under ``rgb_obs``; we do not):

- ``rgb_static``  (S, S, 3) uint8, static camera (S = 200 in CALVIN)
- ``rgb_gripper`` (G, G, 3) uint8, wrist camera (G = 84 in CALVIN)
- ``robot_obs``   (15,) float64, layout :data:`ROBOT_OBS_NAMES`
- ``scene_obs``   (24,) float64, layout :data:`SCENE_OBS_NAMES`

Actions sent to ``step`` are CALVIN's 7-D relative actions: position and Euler parts in [-1, 1]
(scaled by :data:`MAX_POS` / :data:`MAX_ORN` and added to the commanded target pose), gripper exactly
+1 (open) or -1 (close). See ``calvin_conventions.md`` sections 1.3-1.5.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

RGB_STATIC = "rgb_static"
RGB_GRIPPER = "rgb_gripper"
ROBOT_OBS = "robot_obs"
SCENE_OBS = "scene_obs"
OBS_KEYS = (RGB_STATIC, RGB_GRIPPER, ROBOT_OBS, SCENE_OBS)

ROBOT_OBS_NAMES = (
    "tcp_pos_x", "tcp_pos_y", "tcp_pos_z",
    "tcp_orn_x", "tcp_orn_y", "tcp_orn_z",
    "gripper_opening_width",
    "robot_joint_0", "robot_joint_1", "robot_joint_2", "robot_joint_3",
    "robot_joint_4", "robot_joint_5", "robot_joint_6",
    "gripper_action",
)  # fmt: skip
SCENE_OBS_NAMES = (
    "base__slide", "base__drawer", "base__button", "base__switch", "lightbulb", "led",
    "red_block_x", "red_block_y", "red_block_z", "red_block_rx", "red_block_ry", "red_block_rz",
    "blue_block_x", "blue_block_y", "blue_block_z", "blue_block_rx", "blue_block_ry", "blue_block_rz",
    "pink_block_x", "pink_block_y", "pink_block_z", "pink_block_rx", "pink_block_ry", "pink_block_rz",
)  # fmt: skip
ROBOT_OBS_DIM = len(ROBOT_OBS_NAMES)  # 15
SCENE_OBS_DIM = len(SCENE_OBS_NAMES)  # 24
ACTION_DIM = 7

# robot_obs index map
TCP_POS = slice(0, 3)
TCP_ORN = slice(3, 6)
GRIPPER_WIDTH = 6
ARM_JOINTS = slice(7, 14)
GRIPPER_ACTION = 14

# scene_obs index map
SLIDER = 0  # sliding door joint (m), 0 ... 0.28, "left" = 0.28
DRAWER = 1  # drawer joint (m), 0 ... 0.22, "open" = 0.22
BUTTON = 2  # button joint (m), 0 ... 0.02, pressed above 0.01
SWITCH = 3  # switch joint (m), 0 ... 0.088, on above 0.044
LIGHTBULB = 4  # logical state 0/1
LED = 5  # logical state 0/1
BLOCK_NAMES = ("red_block", "blue_block", "pink_block")
BLOCK_SLICES = {name: slice(6 + 6 * i, 12 + 6 * i) for i, name in enumerate(BLOCK_NAMES)}

SLIDER_RANGE = (0.0, 0.28)
DRAWER_RANGE = (0.0, 0.22)
BUTTON_RANGE = (0.0, 0.02)
SWITCH_RANGE = (0.0, 0.088)
BUTTON_TRIGGER = 0.5 * (BUTTON_RANGE[0] + BUTTON_RANGE[1])  # 0.01
SWITCH_TRIGGER = 0.5 * (SWITCH_RANGE[0] + SWITCH_RANGE[1])  # 0.044

# CALVIN's evaluation reset state (calvin_conventions.md 1.4).
NEUTRAL_ROBOT_OBS = np.array(
    [0.02586889, -0.2313129, 0.5712808, 3.09045411, -0.02908596, 1.50013585, 0.07999963,
     -1.21779124, 1.03987629, 2.11978254, -2.34205014, -0.87015899, 1.64119093, 0.55344928, 1.0]
)  # fmt: skip
NEUTRAL_ROBOT_OBS.setflags(write=False)

# Relative action scaling: rel = clip(delta, +-max) / max (calvin_conventions.md 1.3).
MAX_POS = 0.02
MAX_ORN = 0.05


def wrap_to_pi(angle):
    """Angles mapped to [-pi, pi)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


def binarize_gripper(gripper):
    """CALVIN's gripper binarisation of recorded actions: +1 (open) where > 0, else -1 (close)."""
    return np.where(np.asarray(gripper) > 0, 1.0, -1.0)


def policy_gripper(gripper):
    """The gripper command a policy's continuous output is executed as: +1 (open) where >= 0, else -1
    (DiWA, spec section 1.4); evaluation and the calvin_env adapter both send this."""
    return np.where(np.asarray(gripper) >= 0, 1.0, -1.0)


def abs_to_rel(actions_abs, robot_obs):
    """CALVIN's ``rel_actions`` from ``actions`` (absolute next TCP pose + gripper) and ``robot_obs``.

    Works on (..., 7) / (..., 15) arrays. Position deltas are clipped to +-MAX_POS and divided by it;
    Euler deltas are wrapped to [-pi, pi), clipped to +-MAX_ORN and divided by it; the gripper is
    binarised to +-1.
    """
    actions_abs = np.asarray(actions_abs, dtype=np.float64)
    robot_obs = np.asarray(robot_obs, dtype=np.float64)
    dpos = np.clip(actions_abs[..., 0:3] - robot_obs[..., TCP_POS], -MAX_POS, MAX_POS) / MAX_POS
    dorn = wrap_to_pi(actions_abs[..., 3:6] - robot_obs[..., TCP_ORN])
    dorn = np.clip(dorn, -MAX_ORN, MAX_ORN) / MAX_ORN
    return np.concatenate([dpos, dorn, binarize_gripper(actions_abs[..., 6:7])], axis=-1)


def rel_to_abs(rel_action, reference_pose):
    """The absolute pose a relative action commands from ``reference_pose``.

    ``reference_pose`` is (..., 6) xyz+euler (the env's commanded target; ``robot_obs[..., :6]`` when
    the arm tracks it). Returns (..., 7): xyz, Euler wrapped to [-pi, pi), binarised gripper. Inverse
    of :func:`abs_to_rel` for in-range actions.
    """
    rel_action = np.asarray(rel_action, dtype=np.float64)
    reference_pose = np.asarray(reference_pose, dtype=np.float64)
    rel = np.clip(rel_action[..., 0:6], -1.0, 1.0)
    pos = reference_pose[..., 0:3] + rel[..., 0:3] * MAX_POS
    orn = wrap_to_pi(reference_pose[..., 3:6] + rel[..., 3:6] * MAX_ORN)
    return np.concatenate([pos, orn, binarize_gripper(rel_action[..., 6:7])], axis=-1)


Obs = dict  # flat dict: RGB_STATIC, RGB_GRIPPER, ROBOT_OBS, SCENE_OBS -> np.ndarray


@runtime_checkable
class Simulator(Protocol):
    """A CALVIN-compatible simulator.

    ``step`` returns ``(obs, info)``; reward and done do not exist (success is judged outside by
    the task predicates of ``diwa_jax.envs.tasks`` on ``scene_obs``). ``info`` holds at least ``robot_obs``, ``scene_obs``
    and ``scene_info`` with CALVIN's ``doors``/``buttons``/``switches``/``lights`` entries. ``geometry`` (an
    ``envs.geometry.SceneGeometry``) says where the scene's parts are, for scripted skills and random scenes.
    """

    geometry: Any

    @property
    def target_pose(self) -> np.ndarray:
        """The commanded TCP target that relative actions move, (6,) xyz + Euler (accumulated, not wrapped)."""
        ...

    def reset(self, robot_obs: np.ndarray | None = None, scene_obs: np.ndarray | None = None) -> Obs:
        """Restore exactly this state (None: the neutral robot / the env's default scene)."""
        ...

    def step(self, rel_action: np.ndarray) -> tuple[Obs, dict[str, Any]]:
        """Apply one 7-D relative action (gripper exactly +-1) for one 30 Hz control step."""
        ...

    def close(self) -> None:
        """Release the simulator's resources."""
        ...


def scene_info(scene_obs: np.ndarray, button_pressed: bool | None = None) -> dict[str, Any]:
    """CALVIN-style ``scene_info`` (doors, buttons, switches, lights) from a ``scene_obs`` vector."""
    s = np.asarray(scene_obs, dtype=np.float64)
    if button_pressed is None:
        button_pressed = bool(s[BUTTON] > BUTTON_TRIGGER)
    return {
        "doors": {
            "base__slide": {"current_state": float(s[SLIDER])},
            "base__drawer": {"current_state": float(s[DRAWER])},
        },
        "buttons": {"base__button": {"joint_state": float(s[BUTTON]), "logical_state": int(button_pressed)}},
        "switches": {
            "base__switch": {"joint_state": float(s[SWITCH]), "logical_state": int(s[SWITCH] > SWITCH_TRIGGER)}
        },
        "lights": {
            "lightbulb": {"logical_state": int(s[LIGHTBULB] > 0.5)},
            "led": {"logical_state": int(s[LED] > 0.5)},
        },
    }
