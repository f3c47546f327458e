"""Where things are in a simulator's scene: what scripted skills aim at and where random scenes put blocks.

Every simulator backend exposes one :class:`SceneGeometry` as its ``geometry`` attribute, so the same skills and
the same start distributions serve the embedded play-table (``playtable.scene.GEOMETRY``) and CALVIN's scene D
(:data:`CALVIN_SCENE_D`, measured in calvin_env 797142c with ``calvin_conventions.md`` section 6). Both scenes
share the desk, drawer, sliding door and button; they differ in the switch (CALVIN's sits at the edge of the
arm's reach on a steep rail, the play-table's 0.1 m closer on a 20 degree incline) and in where blocks rest.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from diwa_jax.envs import protocol as P

Range = tuple[float, float]


@dataclasses.dataclass(frozen=True)
class BlockSurface:
    """A box in which random scenes put block centres (x, y ranges) resting on height ``z``; a drawer surface
    moves with the drawer (its y range is given at drawer joint 0)."""

    name: str
    x: Range
    y: Range
    z: float
    weight: float  # chance that a block goes here; a scene's weights sum to 1
    in_drawer: bool = False


@dataclasses.dataclass(frozen=True)
class SceneGeometry:
    name: str  # recorded with data sets made in this scene
    drawer_handle_x: Range
    drawer_handle_y: Range  # at drawer joint 0; the drawer opens toward -y
    drawer_handle_z: Range
    drawer_front_y: float
    slide_handle_x: Range  # at slider joint 0; the door moves toward -x
    slide_tcp_yz: tuple[float, float]  # where the fingers push the door handle's side (the middle height)
    slide_approach_z: float  # the height from which the fingers come down beside the handle
    switch_handle_x: Range
    switch_handle_y: Range  # the handle's faces at switch joint 0
    switch_tcp_z: float  # TCP height on the handle's -y face at joint 0
    switch_axis: tuple[float, float, float]  # unit direction the handle moves as the joint grows
    switch_on_push: tuple[float, float]  # TCP (dy, dz) per unit of joint travel pushing the -y face on
    button_xy: tuple[float, float]
    button_top_z: float
    block_surfaces: tuple[BlockSurface, ...]
    block_base_z: tuple[float, float, float]  # height of each block's base frame above its resting surface
    button_clearance: float = 0.10  # block centres stay this far from the button (the press needs room)
    block_spacing: float = 0.11  # between block centres on one surface
    # Turning off: with ``switch_top`` (the TCP's (y, z) on the handle's top at joint 0) press the top straight
    # down, else push the handle's +y face down the rail; the gripper pitched by ``switch_off_pitch`` (rad).
    switch_top: tuple[float, float] | None = None
    switch_off_pitch: float = 0.0


def incline(degrees: float) -> tuple[float, float, float]:
    """The unit direction rising ``degrees`` above the +y axis in the y-z plane."""
    return 0.0, math.cos(math.radians(degrees)), math.sin(math.radians(degrees))


# calvin_env's scene D (global scaling 0.8). The switch handle's -y face and its 60 degree rail are measured from
# calvin_table_D's switch link (joint 0 -> 0.088 moves it by (0, 0.044, 0.076)); block surfaces are the scene
# config's `surfaces`; calvin_env's block frames sit at their bottom face. The handle is a 3 cm knob whose front
# runs parallel to the rail: pushed along the rail the fingers slide over it, pushed 30 degrees up they carry it.
# Its top faces up the rail, pressed down it turns the bulb off; a vertical gripper cannot reach that high
# over the table's back, one pitched by 0.5 rad toward +y can. The door handle is a bar leaning back like the
# door, up to z 0.644: fingers push its upper part, with the hand (from 6.3 cm above the TCP) clear above it.
CALVIN_SCENE_D = SceneGeometry(
    name="calvin_scene_D",
    drawer_handle_x=(0.075, 0.30),
    drawer_handle_y=(-0.262, -0.24),
    drawer_handle_z=(0.34, 0.38),
    drawer_front_y=-0.183,
    slide_handle_x=(0.015, 0.065),
    slide_tcp_yz=(0.03, 0.61),
    slide_approach_z=0.66,
    switch_handle_x=(0.27, 0.33),
    switch_handle_y=(-0.004, 0.02),
    switch_tcp_z=0.51,
    switch_axis=incline(60.0),
    switch_on_push=(1.0, math.tan(math.radians(30.0))),
    button_xy=(-0.12, -0.12),
    button_top_z=0.487,
    block_surfaces=(
        BlockSurface("table", (0.03, 0.33), (-0.14, -0.04), 0.46, 0.7),
        BlockSurface("slider_left", (-0.30, -0.18), (0.06, 0.11), 0.46, 0.15),
        BlockSurface("slider_right", (-0.04, 0.12), (0.06, 0.11), 0.46, 0.15),
    ),
    block_base_z=(1e-4, 1e-4, 1e-4),
    switch_top=(0.02, 0.55),
    switch_off_pitch=-0.5,
)


def _sample_blocks(g: SceneGeometry, rng: np.random.Generator, drawer: float) -> np.ndarray:
    """(18,) poses of the three blocks on ``g``'s surfaces, apart from each other and from the button."""
    weights = [s.weight for s in g.block_surfaces]
    placed: list[tuple[str, np.ndarray]] = []
    poses = []
    for base_z in g.block_base_z:
        for _ in range(1000):
            surface = g.block_surfaces[int(rng.choice(len(weights), p=weights))]
            shift = drawer if surface.in_drawer else 0.0
            xy = np.array([rng.uniform(*surface.x), rng.uniform(surface.y[0] - shift, surface.y[1] - shift)])
            if not surface.in_drawer and np.hypot(*(xy - g.button_xy)) < g.button_clearance:
                continue
            if any(w == surface.name and np.hypot(*(xy - other)) < g.block_spacing for w, other in placed):
                continue
            placed.append((surface.name, xy))
            poses.append([xy[0], xy[1], surface.z + base_z, 0.0, 0.0, rng.uniform(-np.pi, np.pi)])
            break
        else:
            raise RuntimeError(f"could not place the blocks in {g.name}; its block surfaces are too small")
    return np.asarray(poses, dtype=np.float64).reshape(-1)


def sample_scene_obs(g: SceneGeometry, rng: np.random.Generator, **fixed: float) -> np.ndarray:
    """A random consistent ``scene_obs`` in scene ``g``: door/drawer uniform in range, lights random (switch
    consistent with the bulb), button released, blocks placed. ``fixed`` overrides by name: slider, drawer,
    switch, lightbulb, led (the switch follows a fixed bulb unless given too)."""
    unknown = set(fixed) - {"slider", "drawer", "switch", "lightbulb", "led"}
    if unknown:
        raise ValueError(f"sample_scene_obs: unknown overrides {sorted(unknown)}")
    slider = fixed.get("slider", rng.uniform(*P.SLIDER_RANGE))
    drawer = fixed.get("drawer", rng.uniform(*P.DRAWER_RANGE))
    bulb = float(fixed.get("lightbulb", rng.integers(2)))
    led = float(fixed.get("led", rng.integers(2)))
    if "switch" in fixed:
        switch = fixed["switch"]
    elif bulb:
        switch = rng.uniform(0.06, P.SWITCH_RANGE[1])
    else:
        switch = rng.uniform(0.0, 0.03)
    head = np.array([slider, drawer, 0.0, switch, bulb, led], dtype=np.float64)
    return np.concatenate([head, _sample_blocks(g, rng, drawer)])
