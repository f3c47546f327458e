"""A stream of scripted, human-play-like frames from any simulator backend (its ``geometry`` places the skills).

The stream chains activities: skills of the registered scripted tasks whose precondition holds (the drawer is not opened when it
is already open), partial door/drawer moves, free moves through the workspace and pauses. Each skill gets a random style
(``skills.sample_style``, scaled by ``noise``) and is left unfinished on purpose with probability
``failure_prob``. Every frame carries the oracle's verdict: the registered tasks whose predicate first became
true at this frame, relative to the scene when the current activity began (what a language annotator
would label as completed there).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from diwa_jax.envs import protocol as P
from diwa_jax.envs import tasks
from diwa_jax.envs.geometry import sample_scene_obs
from diwa_jax.envs.playtable.skills import (
    free_motion,
    make_skill,
    nudge_skill,
    nudge_tasks,
    precondition,
    sample_robot_obs,
    sample_style,
)

SKILL_PROB = 0.6  # chance that the next activity is a task skill
NUDGE_PROB = 0.1  # a partial move of the drawer or the door
PAUSE_PROB = 0.1  # otherwise a free move
PAUSE_STEPS = (3, 15)
FREE_WAYPOINTS = (1, 3)


@dataclass(frozen=True)
class PlayFrame:
    """One 30 Hz frame of play.

    obs: the observation before the action. rel_action: the 7-D relative action applied (CALVIN's
    ``rel_actions``). actions_abs: CALVIN's ``actions``: the absolute TCP target of the next frame
    (xyz, Euler wrapped to [-pi, pi), gripper +-1), i.e. the env's commanded target after this action;
    ``abs_to_rel(actions_abs, robot_obs)`` differs from ``rel_action`` by the arm's tracking lag.
    activity: what produces this frame's action: a task name, ``nudge:<task>`` (a partial door or
    drawer move), ``free`` or ``pause``; segment: its running number.
    completed: tasks whose predicate first holds at this ``obs``, judged against the scene at the
    first frame of the activity whose actions led to it (the previous frame's segment).
    """

    obs: P.Obs
    rel_action: np.ndarray
    actions_abs: np.ndarray
    completed: tuple[str, ...]
    activity: str
    segment: int


class _Pause:
    """Hold still (zero motion, gripper unchanged) for a number of steps. Like a skill, it notices
    that it is finished when asked for one more action."""

    def __init__(self, steps: int):
        self._left = steps
        self.finished = False

    def act(self, obs: P.Obs) -> np.ndarray:
        self.finished = self._left <= 0
        self._left -= 1
        return np.array([0, 0, 0, 0, 0, 0, obs[P.ROBOT_OBS][P.GRIPPER_ACTION]], dtype=np.float64)


def _next_activity(obs: P.Obs, rng: np.random.Generator, noise: float, failure_prob: float, geometry):
    draw = rng.random()
    if draw < SKILL_PROB:
        feasible = [t for t in tasks.scripted() if precondition(t, obs[P.SCENE_OBS])]
        task = feasible[int(rng.integers(len(feasible)))]
        style = sample_style(rng, noise, fail=bool(rng.random() < failure_prob))
        return task, make_skill(task, obs, rng, geometry, style)
    if draw < SKILL_PROB + NUDGE_PROB:
        options = nudge_tasks(obs[P.SCENE_OBS])
        task = options[int(rng.integers(len(options)))]
        return f"nudge:{task}", nudge_skill(task, obs, rng, geometry, sample_style(rng, noise))
    if draw < SKILL_PROB + NUDGE_PROB + PAUSE_PROB:
        return "pause", _Pause(int(rng.integers(PAUSE_STEPS[0], PAUSE_STEPS[1] + 1)))
    n_waypoints = int(rng.integers(FREE_WAYPOINTS[0], FREE_WAYPOINTS[1] + 1))
    return "free", free_motion(rng, sample_style(rng, noise), n_waypoints)


def play_stream(env: P.Simulator, rng: np.random.Generator, n_frames: int, noise: float, failure_prob: float) -> Iterator[PlayFrame]:
    """Reset ``env`` to a random state drawn from ``rng`` and yield ``n_frames`` frames of play.

    Deterministic given ``rng``'s state (the physics is deterministic). ``noise`` in [0, 1] scales the
    style variation of skills and moves; ``failure_prob`` is the fraction of skills left unfinished.
    """
    if not 0.0 <= failure_prob <= 1.0:
        raise ValueError(f"play_stream: failure_prob must be in [0, 1], got {failure_prob}")
    obs = env.reset(sample_robot_obs(rng), sample_scene_obs(env.geometry, rng))
    activity, name, segment = None, "", -1
    start_scene = obs[P.SCENE_OBS].copy()
    names = tasks.names()
    done = np.zeros(len(names), dtype=bool)
    for _ in range(n_frames):
        newly = tasks.success_table(start_scene, obs[P.SCENE_OBS]) & ~done
        done |= newly
        completed = tuple(t for t, flag in zip(names, newly) if flag)
        action = None
        while action is None:
            if activity is None or activity.finished:
                name, activity = _next_activity(obs, rng, noise, failure_prob, env.geometry)
                segment += 1
                start_scene = obs[P.SCENE_OBS].copy()
                done[:] = False
            action = activity.act(obs)
            if activity.finished:
                action = None  # it ended on this observation: start the next activity now
        actions_abs = P.rel_to_abs(action, env.target_pose)
        next_obs, _ = env.step(action)
        yield PlayFrame(obs, action, actions_abs, completed, name, segment)
        obs = next_obs
