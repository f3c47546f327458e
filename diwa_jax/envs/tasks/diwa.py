"""The 8 tasks of DiWA's CALVIN benchmark: drawer, sliding door, lightbulb and LED, each both ways.

Door tasks are relative moves beyond a threshold; light tasks need the start and the current state to
match the 0->1 / 1->0 transition. The predicates read only articulation joints and light bits, so the
same function labels dataset windows, judges simulator rollouts and runs inside jitted code.
"""
from __future__ import annotations

import numpy as np

from diwa_jax.envs import protocol as P
from diwa_jax.envs.playtable.waypoint import FINGER_HALF_SPAN, FINGER_HALF_THICKNESS, Waypoint
from diwa_jax.envs.tasks import Skill, Task, register

DRAWER_THRESHOLD = 0.12
SLIDER_THRESHOLD = 0.15
LIGHT_ON_ABOVE = 0.5  # lights are stored as floats; > 0.5 reads as 1


def _moved(index: int, sign: float, threshold: float):
    return lambda xp, s0, s: sign * (s[..., index] - s0[..., index]) > threshold


def _switched(index: int, on: bool):
    def predicate(xp, s0, s):
        was, now = s0[..., index] > LIGHT_ON_ABOVE, s[..., index] > LIGHT_ON_ABOVE
        return (~was & now) if on else (was & ~now)
    return predicate


# ---- skills: waypoints from the current scene, in the simulator's geometry g ---------------------------

_LIFT = (0.0, 0.0, 0.08)


def _mid(r):
    return 0.5 * (r[0] + r[1])


def _drawer_waypoints(opening: bool):
    def waypoints(g, s, frac, rng, j):
        d = s[P.DRAWER]
        x = _mid(g.drawer_handle_x) + rng.uniform(-0.05, 0.05) + j[0]
        if opening:  # fingers between the drawer front and the handle bar, pull toward -y
            y = 0.5 * (g.drawer_front_y + g.drawer_handle_y[1]) - d
            y_end = y - frac * (P.DRAWER_RANGE[1] + 0.02 - d)
        else:  # fingers in front of the handle bar, push toward +y
            y = g.drawer_handle_y[0] - d - FINGER_HALF_THICKNESS - 0.025
            y_end = y + frac * (d + 0.04)
        z = _mid(g.drawer_handle_z) + 0.005
        return [
            Waypoint((x, y + 0.2 * j[1], 0.50 + j[2])),
            Waypoint((x, y, z)),
            Waypoint((x, y_end, z), push=True),
            Waypoint(_LIFT, relative=True),
        ]
    return waypoints


def _slider_waypoints(left: bool):
    def waypoints(g, s, frac, rng, j):
        sl = s[P.SLIDER]
        y, z_mid = g.slide_tcp_yz
        if left:  # on the handle's +x side, push toward -x
            x = g.slide_handle_x[1] - sl + FINGER_HALF_SPAN + 0.015 + abs(j[0])
            x_end = x - frac * (P.SLIDER_RANGE[1] + 0.02 - sl)
        else:
            x = g.slide_handle_x[0] - sl - FINGER_HALF_SPAN - 0.015 - abs(j[0])
            x_end = x + frac * (sl + 0.02)
        z = z_mid + rng.uniform(-0.02, 0.02)
        return [
            Waypoint((x, -0.06 + j[1], g.slide_approach_z + j[2])),
            Waypoint((x, y, g.slide_approach_z)),
            Waypoint((x, y, z)),
            Waypoint((x_end, y, z), push=True),
            Waypoint((0.0, -0.07, 0.05), relative=True),
        ]
    return waypoints


def _switch_point(g, face_y: float, q: float) -> tuple[float, float]:
    """(y, z) of a handle face point at joint value q (the joint slides the handle along g.switch_axis)."""
    return face_y + q * g.switch_axis[1], g.switch_tcp_z + q * g.switch_axis[2]


def _lightbulb_waypoints(on: bool):
    def waypoints(g, s, frac, rng, j):
        q = s[P.SWITCH]
        x = _mid(g.switch_handle_x) + rng.uniform(-0.01, 0.01) + 0.3 * j[0]
        pitch = 0.0
        if on:  # behind the TCP: the handle's -y face, push up the incline
            face = g.switch_handle_y[0] - FINGER_HALF_THICKNESS - 0.01
            y0, z0 = _switch_point(g, face, q)
            travel = frac * (P.SWITCH_RANGE[1] + 0.02 - q)
            y1, z1 = y0 + travel * g.switch_on_push[0], z0 + travel * g.switch_on_push[1]
            above = (x, y0 - 0.03 + 0.3 * j[1], 0.60 + j[2])
            retreat = (0.0, -0.06, 0.06)
        elif g.switch_top is not None:  # press the handle's top straight down
            pitch = g.switch_off_pitch
            y0, z0 = g.switch_top[0] + q * g.switch_axis[1], g.switch_top[1] + q * g.switch_axis[2]
            y1, z1 = y0, z0 - frac * ((q + 0.02) * g.switch_axis[2] + 0.01)
            above = (x, y0 - 0.01 + 0.3 * j[1], z0 + 0.04 + abs(j[2]))
            retreat = (0.0, 0.0, 0.08)
        else:  # the handle's +y face, push down the incline
            face = g.switch_handle_y[1] + FINGER_HALF_THICKNESS + 0.01
            y0, z0 = _switch_point(g, face, q)
            y1, z1 = _switch_point(g, face, q - frac * (q + 0.02))
            y0 += 0.01
            # From the -x side at the handle's height: above the handle is at the edge of the reach.
            above = (x - 0.08 + 0.3 * j[0], y0 + 0.3 * abs(j[1]), z0 + 0.02 + abs(j[2]))
            retreat = (0.0, 0.0, 0.08)
        return [
            Waypoint(above, pitch=pitch),
            Waypoint((x, y0, z0), pitch=pitch),
            Waypoint((x, y1, z1), push=True, pitch=pitch),
            Waypoint(retreat, relative=True, pitch=pitch),
        ]
    return waypoints


def _button_waypoints(g, s, frac, rng, j):
    bx, by = g.button_xy
    x, y = bx + 0.3 * j[0], by + 0.3 * j[1]
    z_press = g.button_top_z - 0.032 if frac >= 1 else g.button_top_z - 0.004
    return [
        Waypoint((x, y, 0.56 + j[2])),
        Waypoint((x, y, z_press), push=True),
        Waypoint((x, y, 0.56)),
    ]


# ---- the tasks --------------------------------------------------------------------------------------

def _sliding(name, part, q, q_range, sign, threshold, start_range, margin, waypoints):
    """A drawer or slider task: move ``q`` by ``threshold`` in direction ``sign``, from starts in
    ``start_range``; play performs it while ``margin`` of travel is left and nudges it toward the stop."""
    def room_left(s):
        return s[q] < q_range[1] - margin if sign > 0 else s[q] > margin
    return Task(name, _moved(q, sign, threshold), lambda r: {part: r.uniform(*start_range)},
                Skill(room_left, waypoints, (q, sign, q_range[1] if sign > 0 else q_range[0])))


DIWA_TASKS = (
    _sliding("open_drawer", "drawer", P.DRAWER, P.DRAWER_RANGE, 1.0, DRAWER_THRESHOLD, (0.0, 0.08), 0.13,
             _drawer_waypoints(True)),
    _sliding("close_drawer", "drawer", P.DRAWER, P.DRAWER_RANGE, -1.0, DRAWER_THRESHOLD,
             (0.15, P.DRAWER_RANGE[1]), 0.13, _drawer_waypoints(False)),
    _sliding("move_slider_left", "slider", P.SLIDER, P.SLIDER_RANGE, 1.0, SLIDER_THRESHOLD, (0.0, 0.10), 0.16,
             _slider_waypoints(True)),
    _sliding("move_slider_right", "slider", P.SLIDER, P.SLIDER_RANGE, -1.0, SLIDER_THRESHOLD,
             (0.18, P.SLIDER_RANGE[1]), 0.16, _slider_waypoints(False)),
    Task("turn_on_lightbulb", _switched(P.LIGHTBULB, True), lambda r: {"lightbulb": 0.0},
         Skill(lambda s: s[P.LIGHTBULB] < 0.5, _lightbulb_waypoints(True))),
    Task("turn_off_lightbulb", _switched(P.LIGHTBULB, False), lambda r: {"lightbulb": 1.0},
         Skill(lambda s: s[P.LIGHTBULB] > 0.5, _lightbulb_waypoints(False))),
    Task("turn_on_led", _switched(P.LED, True), lambda r: {"led": 0.0},
         Skill(lambda s: s[P.LED] < 0.5, _button_waypoints)),
    Task("turn_off_led", _switched(P.LED, False), lambda r: {"led": 1.0},
         Skill(lambda s: s[P.LED] > 0.5, _button_waypoints)),
)
for _task in DIWA_TASKS:
    register(_task)
TASKS = tuple(t.name for t in DIWA_TASKS)  # the benchmark's task list, in the paper's order
