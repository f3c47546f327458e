"""The play-table scene: desk, drawer, sliding door, button/LED, switch/lightbulb and three blocks.

World frame and numbers follow scene D of CALVIN after its 0.8 scaling (``calvin_conventions.md``
section 6): table top at z = 0.46; the drawer (0-0.22 m) opens toward -y with its handle bar at
x 0.075-0.30, y -0.262..-0.24, z 0.34-0.38; the sliding door (0-0.28 m) moves toward -x with its handle
at x 0.025-0.05 protruding to y = -0.01; the button top is at (-0.12, -0.12, 0.487) with 0.02 m of
downward travel; the switch handle sits at (0.25, -0.13, 0.52) and slides 0.088 m up a 20 degree
incline toward +y (CALVIN's switch is reached near (0.30, 0, 0.52), at the edge of the arm's reach, so
ours sits about 0.1 m closer to the robot: the switch tasks then fit the 72-step budget). The whole desk is one multibody (links of one body do not collide with each other),
the blocks are separate bodies.

Logic (section 2.3), run once per control step after the physics substeps: the LED toggles on each new
button press (joint > 0.01 now, not at the previous update); the bulb is on while the switch joint is
above 0.044. Lights are fixed links whose colour changes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diwa_jax.envs import protocol as P
from diwa_jax.envs.geometry import BlockSurface, SceneGeometry, incline
from diwa_jax.envs.playtable.assets import Link, Shape, box, write_urdf

TABLE_TOP_Z = 0.46
TABLE_X = (-0.45, 0.45)
TABLE_FRONT_Y = -0.175
TABLE_BACK_Y = 0.315

# Drawer (link frame = world frame at joint 0; the joint moves it toward -y).
DRAWER_FRONT_Y = -0.183
DRAWER_HANDLE_X = (0.075, 0.30)
DRAWER_HANDLE_Y = (-0.262, -0.24)
DRAWER_HANDLE_Z = (0.34, 0.38)
DRAWER_X = (0.02, 0.36)
DRAWER_Z = (0.295, 0.415)
DRAWER_BOTTOM_TOP_Z = 0.305

# Sliding door in front of a cabinet on the table's back half; the joint moves it toward -x.
CABINET_X = (-0.32, 0.17)
CABINET_Y = (0.08, TABLE_BACK_Y)
CABINET_TOP_Z = 0.66
DOOR_X = (0.0, 0.17)
DOOR_Y = (0.057, 0.077)
DOOR_Z = (0.465, 0.635)
SLIDE_HANDLE_X = (0.025, 0.05)
SLIDE_HANDLE_Y = (-0.01, DOOR_Y[0])
SLIDE_HANDLE_Z = (0.50, 0.60)

# Button (pressed along -z) and its housing.
BUTTON_XY = (-0.12, -0.12)
BUTTON_TOP_Z = 0.487
BUTTON_RADIUS = 0.022

# Switch: a handle sliding up an incline toward +y.
SWITCH_AXIS = incline(20.0)
SWITCH_HANDLE_X = (0.235, 0.265)
SWITCH_HANDLE_Y = (-0.14, -0.12)
SWITCH_HANDLE_Z = (0.478, 0.56)

LIGHTBULB_CENTER = (-0.15, 0.12, 0.69)
LED_CENTER = (0.08, 0.10, 0.667)
LIGHTBULB_RGBA = {False: (0.92, 0.92, 0.9, 1.0), True: (1.0, 0.85, 0.1, 1.0)}
LED_RGBA = {False: (0.92, 0.92, 0.9, 1.0), True: (0.1, 0.85, 0.2, 1.0)}

ROBOT_BASE_POS = (-0.34, -0.46, 0.24)  # neutral joints then give CALVIN's neutral TCP (see robot.py)

FRICTION_FORCE = 4.0  # N, velocity motors (target 0) on door, drawer and switch; spring force of the button

WOOD = (0.72, 0.55, 0.38, 1.0)
DARK_WOOD = (0.52, 0.37, 0.25, 1.0)
LIGHT = (0.86, 0.85, 0.8, 1.0)
METAL = (0.25, 0.25, 0.28, 1.0)
FLOOR_RGBA = (0.4, 0.4, 0.43, 1.0)


@dataclass(frozen=True)
class BlockSpec:
    name: str
    size: tuple[float, float, float]
    rgba: tuple[float, float, float, float]
    mass: float = 1.0


BLOCKS = (
    BlockSpec("red_block", (0.056, 0.04, 0.04), (0.85, 0.1, 0.1, 1.0)),
    BlockSpec("blue_block", (0.04, 0.04, 0.04), (0.1, 0.25, 0.85, 1.0)),
    BlockSpec("pink_block", (0.08, 0.04, 0.04), (0.95, 0.45, 0.7, 1.0)),
)


def _scene_links() -> tuple[Link, ...]:
    x0, x1 = TABLE_X
    y0, y1 = TABLE_FRONT_Y, TABLE_BACK_Y
    top = TABLE_TOP_Z
    dx0, dx1 = DRAWER_X
    dz0, dz1 = DRAWER_Z
    desk = Link(
        "desk",
        (
            box((x0, y0, top - 0.04), (x1, y1, top), WOOD),  # table top
            box((x0, y0 + 0.01, 0.0), (0.0, y1, top - 0.04), DARK_WOOD),  # left pedestal
            box((0.38, y0 + 0.01, 0.0), (x1, y1, top - 0.04), DARK_WOOD),  # right pedestal
            box((0.0, y0 + 0.01, 0.0), (0.38, y1, dz0 - 0.01), DARK_WOOD),  # below the drawer
            box((0.0, y1 - 0.02, dz0 - 0.01), (0.38, y1, top - 0.04), DARK_WOOD),  # drawer bay back
            # cabinet behind the sliding door: side walls, back, top
            box((CABINET_X[0], CABINET_Y[0], top), (CABINET_X[0] + 0.02, y1, CABINET_TOP_Z), LIGHT),
            box((CABINET_X[1] - 0.02, CABINET_Y[0], top), (CABINET_X[1], y1, CABINET_TOP_Z), LIGHT),
            box((CABINET_X[0], y1 - 0.02, top), (CABINET_X[1], y1, CABINET_TOP_Z), LIGHT),
            box((CABINET_X[0], CABINET_Y[0], CABINET_TOP_Z - 0.02), (CABINET_X[1], y1, CABINET_TOP_Z), LIGHT),
            # button housing and switch rail
            box((BUTTON_XY[0] - 0.035, BUTTON_XY[1] - 0.035, top), (BUTTON_XY[0] + 0.035, BUTTON_XY[1] + 0.035, top + 0.01), LIGHT),
            box((SWITCH_HANDLE_X[0] - 0.015, SWITCH_HANDLE_Y[0] - 0.03, top), (SWITCH_HANDLE_X[1] + 0.015, SWITCH_HANDLE_Y[1] + 0.10, top + 0.015), METAL),
            # robot pedestal (visual only)
            box((ROBOT_BASE_POS[0] - 0.09, ROBOT_BASE_POS[1] - 0.09, 0.0), (ROBOT_BASE_POS[0] + 0.09, ROBOT_BASE_POS[1] + 0.09, ROBOT_BASE_POS[2]), METAL, collide=False),
        ),
        joint="root",
    )  # fmt: skip
    drawer = Link(
        "drawer",
        (
            box((dx0, DRAWER_FRONT_Y, dz0), (dx1, DRAWER_FRONT_Y + 0.018, dz1), (0.82, 0.72, 0.56, 1.0)),  # front
            box((dx0 + 0.01, DRAWER_FRONT_Y + 0.018, dz0), (dx1 - 0.01, 0.26, DRAWER_BOTTOM_TOP_Z), DARK_WOOD),  # bottom
            box((dx0 + 0.01, DRAWER_FRONT_Y + 0.018, dz0), (dx0 + 0.02, 0.26, dz1 - 0.03), DARK_WOOD),  # sides
            box((dx1 - 0.02, DRAWER_FRONT_Y + 0.018, dz0), (dx1 - 0.01, 0.26, dz1 - 0.03), DARK_WOOD),
            box((dx0 + 0.01, 0.25, dz0), (dx1 - 0.01, 0.26, dz1 - 0.03), DARK_WOOD),  # back
            box((DRAWER_HANDLE_X[0], DRAWER_HANDLE_Y[0], DRAWER_HANDLE_Z[0]), (DRAWER_HANDLE_X[1], DRAWER_HANDLE_Y[1], DRAWER_HANDLE_Z[1]), METAL),
            box((0.08, DRAWER_HANDLE_Y[1], 0.35), (0.095, DRAWER_FRONT_Y, 0.37), METAL),  # standoffs
            box((0.28, DRAWER_HANDLE_Y[1], 0.35), (0.295, DRAWER_FRONT_Y, 0.37), METAL),
        ),
        mass=1.0,
        joint="prismatic",
        joint_name="base__drawer",
        axis=(0.0, -1.0, 0.0),
        limits=P.DRAWER_RANGE,
    )  # fmt: skip
    door = Link(
        "slide_door",
        (
            box((DOOR_X[0], DOOR_Y[0], DOOR_Z[0]), (DOOR_X[1], DOOR_Y[1], DOOR_Z[1]), (0.35, 0.55, 0.75, 1.0)),
            box((SLIDE_HANDLE_X[0], SLIDE_HANDLE_Y[0], SLIDE_HANDLE_Z[0]), (SLIDE_HANDLE_X[1], SLIDE_HANDLE_Y[1], SLIDE_HANDLE_Z[1]), METAL),
        ),
        mass=1.0,
        joint="prismatic",
        joint_name="base__slide",
        axis=(-1.0, 0.0, 0.0),
        limits=P.SLIDER_RANGE,
    )  # fmt: skip
    button = Link(
        "button",
        (Shape("cylinder", (BUTTON_XY[0], BUTTON_XY[1], BUTTON_TOP_Z - 0.01), (BUTTON_RADIUS, 0.02), (0.2, 0.2, 0.22, 1.0)),),
        mass=0.05,
        joint="prismatic",
        joint_name="base__button",
        axis=(0.0, 0.0, -1.0),
        limits=P.BUTTON_RANGE,
    )  # fmt: skip
    switch = Link(
        "switch",
        (box((SWITCH_HANDLE_X[0], SWITCH_HANDLE_Y[0], SWITCH_HANDLE_Z[0]), (SWITCH_HANDLE_X[1], SWITCH_HANDLE_Y[1], SWITCH_HANDLE_Z[1]), (0.12, 0.12, 0.13, 1.0)),),
        mass=0.1,
        joint="prismatic",
        joint_name="base__switch",
        axis=SWITCH_AXIS,
        limits=P.SWITCH_RANGE,
    )  # fmt: skip
    lightbulb = Link(
        "lightbulb",
        (
            Shape("cylinder", (LIGHTBULB_CENTER[0], LIGHTBULB_CENTER[1], CABINET_TOP_Z + 0.01), (0.02, 0.02), METAL),
            Shape("sphere", LIGHTBULB_CENTER, (0.025,), LIGHTBULB_RGBA[False]),
        ),
    )
    led = Link("led", (box(np.subtract(LED_CENTER, (0.025, 0.015, 0.007)), np.add(LED_CENTER, (0.025, 0.015, 0.007)), LED_RGBA[False]),))
    return desk, drawer, door, button, switch, lightbulb, led


def scene_urdf():
    return write_urdf("playtable_scene", _scene_links())


class Scene:
    """The desk multibody, the blocks and the floor inside one bullet client, with CALVIN's light logic.

    Create it after the robot: TinyRenderer draws in creation order, so occluders first is faster.
    """

    def __init__(self, client):
        self._p = client
        self.body = client.loadURDF(str(scene_urdf()), useFixedBase=True, flags=client.URDF_ENABLE_CACHED_GRAPHICS_SHAPES)
        joints = {client.getJointInfo(self.body, j)[1].decode(): j for j in range(client.getNumJoints(self.body))}
        links = {client.getJointInfo(self.body, j)[12].decode(): j for j in range(client.getNumJoints(self.body))}
        self.slide, self.drawer = joints["base__slide"], joints["base__drawer"]
        self.button, self.switch = joints["base__button"], joints["base__switch"]
        self.lightbulb_link, self.led_link = links["lightbulb"], links["led"]
        for joint in (self.slide, self.drawer, self.switch):
            client.setJointMotorControl2(self.body, joint, client.VELOCITY_CONTROL, targetVelocity=0.0, force=FRICTION_FORCE)
        client.setJointMotorControl2(self.body, self.button, client.POSITION_CONTROL, targetPosition=0.0, force=FRICTION_FORCE)
        self.blocks = []
        for spec in BLOCKS:
            half = [0.5 * s for s in spec.size]
            col = client.createCollisionShape(client.GEOM_BOX, halfExtents=half)
            vis = client.createVisualShape(client.GEOM_BOX, halfExtents=half, rgbaColor=spec.rgba)
            self.blocks.append(client.createMultiBody(spec.mass, col, vis, basePosition=[0, 0, 1]))
        # The floor comes last: TinyRenderer draws in creation order and skips shading of fragments
        # that fail the depth test, so drawing the big background last saves most of its cost.
        half = [1.5, 1.5, 0.01]
        client.createMultiBody(
            0.0,
            client.createCollisionShape(client.GEOM_BOX, halfExtents=half),
            client.createVisualShape(client.GEOM_BOX, halfExtents=half, rgbaColor=FLOOR_RGBA),
            basePosition=[0.0, 0.0, -0.01],
        )
        self.led_on = False
        self.bulb_on = False
        self._button_was_pressed = False
        self._shown = {}

    def reset(self, scene_obs: np.ndarray) -> None:
        """Set joints, lights and block poses exactly; the switch is made consistent with the bulb."""
        p, s = self._p, np.asarray(scene_obs, dtype=np.float64)
        if s.shape != (P.SCENE_OBS_DIM,):
            raise ValueError(f"scene_obs must have shape ({P.SCENE_OBS_DIM},), got {s.shape}")
        self.bulb_on = bool(s[P.LIGHTBULB] > 0.5)
        self.led_on = bool(s[P.LED] > 0.5)
        switch = s[P.SWITCH]
        if self.bulb_on != (switch > P.SWITCH_TRIGGER):
            # The level-triggered switch would override the bulb at the next update (CALVIN does the same).
            switch = P.SWITCH_RANGE[1] if self.bulb_on else P.SWITCH_RANGE[0]
        for joint, q in ((self.slide, s[P.SLIDER]), (self.drawer, s[P.DRAWER]), (self.button, s[P.BUTTON]), (self.switch, switch)):
            p.resetJointState(self.body, joint, float(q), targetVelocity=0.0)
        self._button_was_pressed = bool(s[P.BUTTON] > P.BUTTON_TRIGGER)
        for block, name in zip(self.blocks, P.BLOCK_NAMES):
            pose = s[P.BLOCK_SLICES[name]]
            p.resetBasePositionAndOrientation(block, pose[:3].tolist(), p.getQuaternionFromEuler(pose[3:].tolist()))
            p.resetBaseVelocity(block, [0, 0, 0], [0, 0, 0])
        self._show_lights()

    def update(self) -> None:
        """The per-step scene logic: LED edge-triggered by the button, bulb level-triggered by the switch."""
        button_q = self._p.getJointState(self.body, self.button)[0]
        pressed = button_q > P.BUTTON_TRIGGER
        if pressed and not self._button_was_pressed:
            self.led_on = not self.led_on
        self._button_was_pressed = pressed
        self.bulb_on = self._p.getJointState(self.body, self.switch)[0] > P.SWITCH_TRIGGER
        self._show_lights()

    def _show_lights(self) -> None:
        for link, on, colours in ((self.lightbulb_link, self.bulb_on, LIGHTBULB_RGBA), (self.led_link, self.led_on, LED_RGBA)):
            if self._shown.get(link) != on:
                self._p.changeVisualShape(self.body, link, rgbaColor=colours[on])
                self._shown[link] = on

    def button_pressed(self) -> bool:
        return self._button_was_pressed

    def scene_obs(self) -> np.ndarray:
        p = self._p
        joints = [s[0] for s in p.getJointStates(self.body, [self.slide, self.drawer, self.button, self.switch])]
        parts = [joints, [float(self.bulb_on), float(self.led_on)]]
        for block in self.blocks:
            pos, orn = p.getBasePositionAndOrientation(block)
            parts += [pos, p.getEulerFromQuaternion(orn)]
        return np.concatenate([np.asarray(x, dtype=np.float64) for x in parts])


# ---- what skills aim at and where random scenes put blocks ---------------------------------------------

# Block centres on the table stay clear of the button (its press needs room for the fingers), of the
# door handle's sweep and of the switch; inside the cabinet they sit behind the door.
GEOMETRY = SceneGeometry(
    name="playtable",
    drawer_handle_x=DRAWER_HANDLE_X,
    drawer_handle_y=DRAWER_HANDLE_Y,
    drawer_handle_z=DRAWER_HANDLE_Z,
    drawer_front_y=DRAWER_FRONT_Y,
    slide_handle_x=SLIDE_HANDLE_X,
    slide_tcp_yz=(0.015, 0.55),  # between the handle's front and the door
    slide_approach_z=0.62,
    switch_handle_x=SWITCH_HANDLE_X,
    switch_handle_y=SWITCH_HANDLE_Y,
    switch_tcp_z=0.50,  # the handle spans 0.478-0.56; the fingers reach up from the TCP
    switch_axis=SWITCH_AXIS,
    switch_on_push=SWITCH_AXIS[1:],
    button_xy=BUTTON_XY,
    button_top_z=BUTTON_TOP_Z,
    block_surfaces=(
        BlockSurface("table", (-0.38, 0.16), (-0.14, 0.0), TABLE_TOP_Z, 0.7),
        BlockSurface("cabinet", (CABINET_X[0] + 0.06, CABINET_X[1] - 0.06), (CABINET_Y[0] + 0.05, TABLE_BACK_Y - 0.06),
                     TABLE_TOP_Z, 0.2),
        BlockSurface("drawer", (DRAWER_X[0] + 0.07, DRAWER_X[1] - 0.07), (-0.13, 0.20), DRAWER_BOTTOM_TOP_Z, 0.1,
                     in_drawer=True),
    ),
    block_base_z=tuple(0.5 * spec.size[2] + 1e-4 for spec in BLOCKS),  # our block frames sit at their centre
)
