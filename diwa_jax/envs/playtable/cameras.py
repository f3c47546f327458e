"""Static and wrist cameras (``calvin_conventions.md`` section 5), rendered headless."""
from __future__ import annotations

import importlib.util

import numpy as np

STATIC_FOV = 10.0
STATIC_NEAR, STATIC_FAR = 0.01, 10.0
STATIC_LOOK_FROM = (2.8715, -2.1666, 2.5552)
STATIC_LOOK_AT = (-0.0262, -0.0302, 0.3920)
STATIC_UP = (0.4041, 0.2263, 0.8863)
GRIPPER_FOV = 75.0
GRIPPER_NEAR, GRIPPER_FAR = 0.01, 2.0

RENDERERS = ("tiny", "egl")


def renderer_flag(client, renderer: str) -> int:
    """The getCameraImage renderer flag; loads the EGL plugin into this client for ``egl``."""
    if renderer == "tiny":
        return client.ER_TINY_RENDERER
    if renderer == "egl":
        spec = importlib.util.find_spec("eglRenderer")
        if spec is None or client.loadPlugin(spec.origin, "_eglRendererPlugin") < 0:
            raise RuntimeError("renderer='egl': pybullet's eglRenderer plugin could not be loaded; use renderer='tiny'")
        return client.ER_BULLET_HARDWARE_OPENGL
    raise ValueError(f"unknown renderer {renderer!r}; choose one of {RENDERERS}")


class Cameras:
    """Renders ``rgb_static`` (fixed pose) and ``rgb_gripper`` (the ``gripper_cam`` frame)."""

    def __init__(self, client, static_size: int, gripper_size: int, renderer: str):
        self._p = client
        self.static_size = int(static_size)
        self.gripper_size = int(gripper_size)
        self._flag = renderer_flag(client, renderer)
        self._static_view = client.computeViewMatrix(STATIC_LOOK_FROM, STATIC_LOOK_AT, STATIC_UP)
        self._static_proj = client.computeProjectionMatrixFOV(STATIC_FOV, 1.0, STATIC_NEAR, STATIC_FAR)
        self._gripper_proj = client.computeProjectionMatrixFOV(GRIPPER_FOV, 1.0, GRIPPER_NEAR, GRIPPER_FAR)

    def _render(self, size: int, view, proj) -> np.ndarray:
        _, _, rgba, _, _ = self._p.getCameraImage(
            size, size, view, proj, renderer=self._flag, flags=self._p.ER_NO_SEGMENTATION_MASK
        )
        return np.asarray(rgba, dtype=np.uint8).reshape(size, size, 4)[..., :3].copy()

    def static(self) -> np.ndarray:
        return self._render(self.static_size, self._static_view, self._static_proj)

    def gripper(self, cam_pos: np.ndarray, cam_rot: np.ndarray) -> np.ndarray:
        """The wrist camera looks along its frame's +y with up = its -z."""
        forward, up = cam_rot[:, 1], -cam_rot[:, 2]
        view = self._p.computeViewMatrix(cam_pos.tolist(), (cam_pos + forward).tolist(), up.tolist())
        return self._render(self.gripper_size, view, self._gripper_proj)
