"""The task registry and the 8 DiWA tasks' predicates: CALVIN's thresholds, batching, jit, agreement with a
plain reference, and registering a task."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diwa_jax.envs import tasks
from diwa_jax.envs.tasks import completed_tasks, success, success_table
from diwa_jax.envs.tasks.diwa import TASKS


def _reference(s0, s, task):
    """Plain-Python reading of calvin_conventions.md section 3, one pair at a time."""
    d_drawer, d_slide = s[1] - s0[1], s[0] - s0[0]
    bulb0, bulb, led0, led = s0[4] > 0.5, s[4] > 0.5, s0[5] > 0.5, s[5] > 0.5
    if task == "open_drawer":
        return d_drawer > 0.12
    if task == "close_drawer":
        return d_drawer < -0.12
    if task == "move_slider_left":
        return d_slide > 0.15
    if task == "move_slider_right":
        return d_slide < -0.15
    if task == "turn_on_lightbulb":
        return (not bulb0) and bulb
    if task == "turn_off_lightbulb":
        return bulb0 and not bulb
    if task == "turn_on_led":
        return (not led0) and led
    if task == "turn_off_led":
        return led0 and not led
    raise AssertionError(task)


def _scene(slider=0.0, drawer=0.0, bulb=0.0, led=0.0):
    s = np.zeros(24)
    s[0], s[1], s[4], s[5] = slider, drawer, bulb, led
    return s


def test_the_benchmark_tasks_are_registered_in_the_papers_order():
    assert tasks.names()[:8] == TASKS == ("open_drawer", "close_drawer", "move_slider_left", "move_slider_right",
                                          "turn_on_lightbulb", "turn_off_lightbulb", "turn_on_led", "turn_off_led")
    assert tasks.scripted()[:8] == TASKS


@pytest.mark.parametrize(
    "s0, s, expected",
    [
        (_scene(drawer=0.0), _scene(drawer=0.13), {"open_drawer"}),
        (_scene(drawer=0.0), _scene(drawer=0.12), set()),  # delta exactly 0.12: strict threshold
        (_scene(drawer=0.22), _scene(drawer=0.05), {"close_drawer"}),
        (_scene(slider=0.0), _scene(slider=0.28), {"move_slider_left"}),
        (_scene(slider=0.2), _scene(slider=0.06), set()),  # -0.14 is not beyond -0.15
        (_scene(slider=0.28), _scene(slider=0.0), {"move_slider_right"}),
        (_scene(bulb=0.0), _scene(bulb=1.0), {"turn_on_lightbulb"}),
        (_scene(bulb=1.0), _scene(bulb=0.0), {"turn_off_lightbulb"}),
        (_scene(bulb=1.0), _scene(bulb=1.0), set()),  # already on: neither
        (_scene(led=0.0), _scene(led=1.0), {"turn_on_led"}),
        (_scene(led=1.0), _scene(led=0.0), {"turn_off_led"}),
        (_scene(led=0.4), _scene(led=0.6), {"turn_on_led"}),  # lights read as bits (> 0.5)
        (_scene(drawer=0.2, led=1.0), _scene(drawer=0.0, slider=0.2, led=0.0), {"close_drawer", "move_slider_left", "turn_off_led"}),
    ],
)
def test_hand_computed_cases(s0, s, expected):
    flags = np.asarray(success_table(s0, s))
    assert flags.shape == (len(tasks.names()),) and flags.dtype == bool
    assert {t for t, f in zip(tasks.names(), flags) if f} == expected
    assert set(completed_tasks(s0, s)) == expected
    for task in TASKS:
        assert bool(success(task, s0, s)) == (task in expected)


def test_batched_jitted_and_numpy_agree_with_reference():
    rng = np.random.default_rng(0)
    n = 300
    s0 = np.zeros((n, 24))
    s = np.zeros((n, 24))
    for arr in (s0, s):
        arr[:, 0] = rng.uniform(0, 0.28, n)
        arr[:, 1] = rng.uniform(0, 0.22, n)
        arr[:, 4] = rng.integers(0, 2, n)
        arr[:, 5] = rng.integers(0, 2, n)
        arr[:, 6:] = rng.normal(size=(n, 18))
    expected_all = np.array([[_reference(a, b, t) for t in TASKS] for a, b in zip(s0, s)])
    assert expected_all.any(axis=0).all(), "every task should occur in the random batch"

    table = jax.jit(lambda a, b: success_table(a, b, jnp))
    np.testing.assert_array_equal(np.asarray(table(jnp.asarray(s0), jnp.asarray(s))), expected_all)
    np.testing.assert_array_equal(success_table(s0, s), expected_all)
    for k, task in enumerate(TASKS):
        got = jax.jit(lambda a, b: success(task, a, b, jnp))(s0, s)
        np.testing.assert_array_equal(np.asarray(got), expected_all[:, k])
    # one start broadcast against a time axis of scenes, as when labelling a window
    window = success("move_slider_right", s0[0], s[:10])
    np.testing.assert_array_equal(window, [_reference(s0[0], x, "move_slider_right") for x in s[:10]])


def test_unknown_task_and_batch_errors():
    with pytest.raises(ValueError, match="unknown task 'open_the_fridge'.*register"):
        tasks.get("open_the_fridge")
    with pytest.raises(ValueError, match="already registered"):
        tasks.register(tasks.get("open_drawer"))
    with pytest.raises(ValueError, match="single"):
        completed_tasks(np.zeros((2, 24)), np.zeros((2, 24)))


def test_a_registered_task_is_judged_and_placed_but_leaves_the_others_alone():
    nudged = tasks.Task("nudge_drawer_open", lambda xp, s0, s: s[..., 1] - s0[..., 1] > 0.02,
                        lambda rng: {"drawer": rng.uniform(0.0, 0.05)})
    before = tasks.names()
    tasks.register(nudged, before="close_drawer")
    try:
        assert tasks.names() == (before[0], "nudge_drawer_open") + before[1:]
        assert "nudge_drawer_open" not in tasks.scripted()  # no skill: play does not perform it
        assert completed_tasks(_scene(drawer=0.0), _scene(drawer=0.05)) == ("nudge_drawer_open",)
        assert completed_tasks(_scene(drawer=0.0), _scene(drawer=0.2)) == ("open_drawer", "nudge_drawer_open")
        assert tasks.stream("close_drawer") == tasks.stream("close_drawer") != tasks.stream("nudge_drawer_open")
    finally:
        tasks.unregister("nudge_drawer_open")
    assert tasks.names() == before
