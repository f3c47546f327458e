"""GAE (diwa_jax/finetune/gae.py) against hand computations."""
import jax
import numpy as np
import pytest

from diwa_jax.finetune.gae import gae


def _loop_gae(rewards, values, terminated, last_value, gamma, lam):
    """Plain-Python reference, one env at a time, backwards in time."""
    steps, envs = len(rewards), len(rewards[0])
    advantages = [[0.0] * envs for _ in range(steps)]
    for n in range(envs):
        next_advantage, next_value = 0.0, float(last_value[n])
        for t in reversed(range(steps)):
            cont = 0.0 if terminated[t][n] else 1.0
            delta = rewards[t][n] + gamma * next_value * cont - values[t][n]
            next_advantage = delta + gamma * lam * cont * next_advantage
            advantages[t][n] = next_advantage
            next_value = values[t][n]
    return np.array(advantages)


def test_literal_two_step_example():
    # T = 2, N = 1, gamma = 0.5, lam = 0.5, no termination:
    # delta_1 = 1 + 0.5*4 - 2 = 1; A_1 = 1
    # delta_0 = 0 + 0.5*2 - 1 = 0; A_0 = 0 + 0.25*1 = 0.25
    adv, ret = gae(np.array([[0.0], [1.0]]), np.array([[1.0], [2.0]]), np.array([[False], [False]]),
                   np.array([4.0]), 0.5, 0.5)
    np.testing.assert_allclose(adv[:, 0], [0.25, 1.0], rtol=1e-6)
    np.testing.assert_allclose(ret[:, 0], [1.25, 3.0], rtol=1e-6)
    # terminating at t = 0 cuts both the bootstrap and the recursion: A_0 = 0 - 1 = -1
    adv, _ = gae(np.array([[0.0], [1.0]]), np.array([[1.0], [2.0]]), np.array([[True], [False]]),
                 np.array([4.0]), 0.5, 0.5)
    np.testing.assert_allclose(adv[:, 0], [-1.0, 1.0], rtol=1e-6)


def test_matches_python_loop_with_terminations():
    rng = np.random.default_rng(0)
    steps, envs = 9, 3
    rewards = rng.normal(size=(steps, envs)).astype(np.float32)
    values = rng.normal(size=(steps, envs)).astype(np.float32)
    last_value = rng.normal(size=(envs,)).astype(np.float32)
    terminated = np.zeros((steps, envs), bool)
    terminated[[2, 6], 0] = True
    terminated[8, 1] = True  # terminal on the last step: last_value must not be used for env 1
    expected = _loop_gae(rewards.tolist(), values.tolist(), terminated.tolist(), last_value, 0.999, 0.95)
    adv, ret = jax.jit(gae, static_argnums=(4, 5))(rewards, values, terminated, last_value, 0.999, 0.95)
    np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, expected + values, rtol=1e-5, atol=1e-5)
    # env 1's last advantage is r - V alone
    assert adv[8, 1] == pytest.approx(rewards[8, 1] - values[8, 1], abs=1e-6)


def test_truncation_is_not_terminal():
    # Env truncated after step 1 and auto-reset: step 2 holds the new episode's first state. Without a
    # termination flag, step 1 bootstraps from V of that new state and the recursion runs across.
    rewards = np.array([[0.0], [0.0], [1.0]], np.float32)
    values = np.array([[0.5], [0.25], [2.0]], np.float32)
    gamma, lam = 0.9, 0.8
    adv, _ = gae(rewards, values, np.zeros((3, 1), bool), np.array([3.0], np.float32), gamma, lam)
    a2 = 1.0 + gamma * 3.0 - 2.0
    a1 = (0.0 + gamma * 2.0 - 0.25) + gamma * lam * a2
    a0 = (0.0 + gamma * 0.25 - 0.5) + gamma * lam * a1
    np.testing.assert_allclose(adv[:, 0], [a0, a1, a2], rtol=1e-6)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="last_value"):
        gae(np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((3,)), 0.9, 0.9)
