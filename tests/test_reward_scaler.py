"""Running reward scaling (diwa_jax/finetune/reward_scaler.py) against a numpy reference.

The reference keeps every discounted return seen so far and computes the pooled mean/variance
directly (plus the prior pseudo-observation: count 1e-4, mean 0, var 1), which is what the recursive
parallel merge must equal.
"""
import jax
import numpy as np

from diwa_jax.finetune.reward_scaler import init_reward_scaler, update_and_scale

PRIOR_COUNT = 1e-4


class NumpyReference:
    def __init__(self, envs, gamma, clip):
        self.gamma, self.clip = gamma, clip
        self.carry = np.zeros(envs)
        self.seen = []

    def __call__(self, rewards, firsts):
        steps, envs = rewards.shape
        returns = np.zeros((steps, envs))
        for n in range(envs):
            running = self.carry[n]
            for t in range(steps):
                running = rewards[t, n] + (0.0 if firsts[t, n] else self.gamma * running)
                returns[t, n] = running
        self.carry = returns[-1].copy()
        self.seen.append(returns.ravel())
        data = np.concatenate(self.seen)
        count = PRIOR_COUNT + data.size
        mean = data.sum() / count
        second_moment = (PRIOR_COUNT * 1.0 + np.square(data).sum()) / count  # prior: mean 0, var 1
        var = second_moment - mean**2
        scaled = np.clip(rewards / np.sqrt(var + 1e-8), -self.clip, self.clip)
        return mean, var, count, scaled


def _rollout(rng, steps, envs, iteration):
    rewards = (rng.random((steps, envs)) < 0.2).astype(np.float32) * rng.uniform(0.5, 3.0, (steps, envs))
    firsts = rng.random((steps, envs)) < 0.15
    if iteration == 0:
        firsts[0] = True
    return rewards.astype(np.float32), firsts


def test_matches_numpy_over_iterations():
    rng = np.random.default_rng(1)
    steps, envs, gamma, clip = 7, 3, 0.99, 10.0
    reference = NumpyReference(envs, gamma, clip)
    state = init_reward_scaler(envs)
    step = jax.jit(update_and_scale, static_argnums=(3, 4))
    for iteration in range(5):
        rewards, firsts = _rollout(rng, steps, envs, iteration)
        state, scaled = step(state, rewards, firsts, gamma, clip)
        mean, var, count, expected = reference(rewards, firsts)
        np.testing.assert_allclose(state.mean, mean, rtol=1e-5)
        np.testing.assert_allclose(state.var, var, rtol=1e-5)
        np.testing.assert_allclose(state.count, count, rtol=1e-6)
        np.testing.assert_allclose(state.running_return, reference.carry, rtol=1e-5)
        np.testing.assert_allclose(scaled, expected, rtol=1e-5)


def test_first_update_by_hand_and_clip():
    # One env, rewards [2, 0, 4], first at t=2: returns [2, 0.5*2 = 1, 4] with gamma 0.5.
    state, scaled = update_and_scale(init_reward_scaler(1), np.array([[2.0], [0.0], [4.0]], np.float32),
                                     np.array([[True], [False], [True]]), 0.5, 1.5)
    count = PRIOR_COUNT + 3
    mean = 7.0 / count
    var = (PRIOR_COUNT + 4.0 + 1.0 + 16.0) / count - mean**2
    np.testing.assert_allclose([state.mean, state.var, state.count], [mean, var, count], rtol=1e-5)
    np.testing.assert_allclose(state.running_return, [4.0])
    std = np.sqrt(var)  # ~1.25: 2/std and 4/std exceed the clip of 1.5
    np.testing.assert_allclose(scaled[:, 0], [min(2.0 / std, 1.5), 0.0, 1.5], rtol=1e-5)
