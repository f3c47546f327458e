"""``PlayTable``: the embedded CALVIN-compatible simulator (implements ``protocol.Simulator``).

One control step (30 Hz): the relative action moves the commanded target pose, IK sets the joint motor
targets, 8 physics substeps run at 240 Hz, then the scene logic updates the lights, then the
observation is read (``calvin_conventions.md`` section 4). Each env owns its own headless
``BulletClient`` (p.DIRECT), so several envs can live in one process.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pybullet

from diwa_jax.envs import protocol as P
from diwa_jax.envs.playtable.cameras import RENDERERS, Cameras
from diwa_jax.envs.playtable.robot import Panda
from diwa_jax.envs.geometry import sample_scene_obs
from diwa_jax.envs.playtable.scene import GEOMETRY, Scene

PHYSICS_HZ = 240
CONTROL_HZ = 30
SUBSTEPS = PHYSICS_HZ // CONTROL_HZ  # 8


class _Client:
    """pybullet's module API bound to one physics server (like pybullet_utils' BulletClient, with an
    explicit, idempotent disconnect)."""

    def __init__(self):
        self.id = pybullet.connect(pybullet.DIRECT)

    def __getattr__(self, name):
        attr = getattr(pybullet, name)
        return functools.partial(attr, physicsClientId=self.id) if callable(attr) else attr

    def disconnect(self) -> None:
        if self.id >= 0:
            pybullet.disconnect(physicsClientId=self.id)
            self.id = -1


class PlayTable:
    """The play-table simulator.

    Args:
      static_size, gripper_size: square render sizes of the static and wrist cameras.
      renderer: ``tiny`` (pybullet's CPU TinyRenderer) or ``egl`` (pybullet's EGL plugin).
      seed: seeds the scenes drawn by ``reset(scene_obs=None)``.
      render: False skips both cameras; observations then hold only ``robot_obs`` and ``scene_obs``.
    """

    geometry = GEOMETRY

    def __init__(self, static_size: int = 200, gripper_size: int = 84, renderer: str = "tiny", seed: int = 0, render: bool = True):
        if render and renderer not in RENDERERS:
            raise ValueError(f"PlayTable: unknown renderer {renderer!r}; choose one of {RENDERERS}")
        self._rng = np.random.default_rng(seed)
        self._p = _Client()
        try:
            # The cameras first: the EGL plugin only sees bodies created after it is loaded.
            self.cameras = Cameras(self._p, static_size, gripper_size, renderer) if render else None
            self.reset()
        except Exception:
            self._p.disconnect()
            raise

    def _build_world(self) -> None:
        """A fresh physics world. Every reset builds one: the solver's contact manifolds (their order and
        warm-start impulses) otherwise carry over from the episodes run before, so the same reset state and
        actions would give slightly different trajectories on simulators with different histories."""
        p = self._p
        p.resetSimulation()
        p.setGravity(0, 0, -9.81)
        p.setTimeStep(1.0 / PHYSICS_HZ)
        p.setPhysicsEngineParameter(deterministicOverlappingPairs=1)  # sorted contact pairs within an episode
        self.robot = Panda(p)  # before the scene: it occludes the desk in both cameras
        self.scene = Scene(p)

    @property
    def target_pose(self) -> np.ndarray:
        """The commanded TCP target, (6,) xyz + Euler (accumulated, not wrapped)."""
        return np.concatenate([self.robot.target_pos, self.robot.target_orn])

    def reset(self, robot_obs: np.ndarray | None = None, scene_obs: np.ndarray | None = None) -> P.Obs:
        """Restore exactly this state in a fresh physics world. None: the neutral robot / a scene drawn from
        the env's seed."""
        self._build_world()
        self.robot.reset(P.NEUTRAL_ROBOT_OBS if robot_obs is None else robot_obs)
        self.scene.reset(sample_scene_obs(GEOMETRY, self._rng) if scene_obs is None else scene_obs)
        return self.get_obs()

    def step(self, rel_action: np.ndarray) -> tuple[P.Obs, dict[str, Any]]:
        action = np.asarray(rel_action, dtype=np.float64)
        if action.shape != (P.ACTION_DIM,) or not np.all(np.isfinite(action)):
            raise ValueError(f"PlayTable.step: rel_action must be a finite ({P.ACTION_DIM},) array, got {action!r}")
        if action[6] not in (-1.0, 1.0):
            raise ValueError(
                f"PlayTable.step: the gripper action must be exactly -1 or +1, got {action[6]}; "
                "binarize it with diwa_jax.envs.protocol.binarize_gripper"
            )
        self.robot.apply(action)
        for _ in range(SUBSTEPS):
            self._p.stepSimulation()
        self.scene.update()
        obs = self.get_obs()
        return obs, self._info(obs)

    def get_obs(self) -> P.Obs:
        obs = {P.ROBOT_OBS: self.robot.robot_obs(), P.SCENE_OBS: self.scene.scene_obs()}
        if self.cameras is not None:
            obs[P.RGB_STATIC] = self.cameras.static()
            obs[P.RGB_GRIPPER] = self.cameras.gripper(*self.robot.camera_pose())
        return obs

    def get_info(self) -> dict[str, Any]:
        return self._info({P.ROBOT_OBS: self.robot.robot_obs(), P.SCENE_OBS: self.scene.scene_obs()})

    def _info(self, obs: P.Obs) -> dict[str, Any]:
        return {
            P.ROBOT_OBS: obs[P.ROBOT_OBS],
            P.SCENE_OBS: obs[P.SCENE_OBS],
            "scene_info": P.scene_info(obs[P.SCENE_OBS], self.scene.button_pressed()),
        }

    def close(self) -> None:
        self._p.disconnect()
