"""A scripted skill's waypoint and the finger geometry task skills place their waypoints with."""
from __future__ import annotations

from dataclasses import dataclass

FINGER_HALF_THICKNESS = 0.0105  # closed fingers, across the spread axis (world y at neutral yaw)
FINGER_HALF_SPAN = 0.026  # closed fingers, along the spread axis (world x at neutral yaw)


@dataclass(frozen=True)
class Waypoint:
    goal: tuple[float, float, float]  # absolute TCP goal, or an offset from the TCP when relative
    gripper: float = -1.0
    push: bool = False  # contact phase: also ends on stall
    relative: bool = False
    pitch: float = 0.0  # added to the skill's orientation goal's pitch (rad) while this waypoint is followed
