"""Reward classifier: losses against hand computations, metrics, balancing, learning a separable toy problem."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diwa_jax.reward.classifier import RewardSpec, classifier_logits, reward_from_logits
from diwa_jax.reward.losses import cross_entropy, precision_recall, supcon_ntxent
from diwa_jax.reward.train import (
    RewardBatch,
    balance_episode_samples,
    create_reward_state,
    evaluate_classifier,
    make_reward_update,
)


def hand_ntxent(emb, labels, tau):
    z = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    n = len(labels)
    per_anchor = []
    for i in range(n):
        positives = [j for j in range(n) if j != i and labels[j] == labels[i]]
        if not positives:
            continue
        denominator = sum(math.exp(z[i] @ z[k] / tau) for k in range(n) if k != i)
        per_anchor.append(np.mean([math.log(math.exp(z[i] @ z[j] / tau) / denominator) for j in positives]))
    return -np.mean(per_anchor)


def test_ntxent_matches_hand_computation():
    emb = np.random.default_rng(0).normal(size=(7, 5)) * 3.0
    labels = np.array([0, 0, 1, 1, 1, 0, 2])  # the class-2 anchor has no positive and is left out
    for tau in (0.5, 0.1):
        got = float(supcon_ntxent(jnp.asarray(emb, jnp.float32), jnp.asarray(labels), tau))
        assert got == pytest.approx(hand_ntxent(emb, labels, tau), rel=1e-4)


def test_ntxent_degenerate_batches_are_finite():
    one = jnp.ones((1, 4))
    loss, grad = jax.value_and_grad(supcon_ntxent)(one, jnp.array([1]), 0.5)
    assert float(loss) == 0.0 and np.all(np.asarray(grad) == 0)
    assert float(supcon_ntxent(jnp.eye(3), jnp.array([0, 1, 2]), 0.5)) == 0.0


def test_cross_entropy_matches_numpy():
    logits = np.random.default_rng(1).normal(size=(6, 2)) * 2
    labels = np.array([0, 1, 1, 0, 1, 0])
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -np.mean(log_softmax[np.arange(6), labels])
    assert float(cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))) == pytest.approx(expected, rel=1e-5)


def test_precision_recall():
    precision, recall = precision_recall(jnp.array([1, 1, 0, 0, 1, 1]), jnp.array([1, 0, 0, 1, 1, 0]))
    assert float(precision) == pytest.approx(2 / 4) and float(recall) == pytest.approx(2 / 3)
    precision, recall = precision_recall(jnp.array([0, 0, 0]), jnp.array([1, 0, 0]))
    assert float(precision) == 0.0 and float(recall) == 0.0


def test_reward_from_logits():
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [0.5, 0.5 + math.log(3.0)]])
    np.testing.assert_array_equal(reward_from_logits(logits, "binary"), [0.0, 1.0, 1.0])
    np.testing.assert_allclose(reward_from_logits(logits, "probability"),
                               [1 / (1 + math.e**2), math.e / (1 + math.e), 0.75], rtol=1e-6)
    with pytest.raises(ValueError, match="reward_mode"):
        reward_from_logits(logits, "argmax")


def test_balancing_counts_and_quirk():
    middle = np.r_[np.zeros(20), np.ones(5), np.zeros(15)].astype(int)  # positives not a suffix
    episodes = [np.r_[np.zeros(30), np.ones(5)].astype(int), np.r_[np.zeros(5), np.ones(3)].astype(int), middle]
    rng = np.random.default_rng(0)
    seen_quirk, seen_uniform = set(), set()
    for _ in range(200):
        for quirk, seen in ((True, seen_quirk), (False, seen_uniform)):
            picked = balance_episode_samples(episodes, 10, rng, quirk=quirk)
            assert [len(p) for p in picked] == [10 + 5, 5 + 3, 10 + 5]
            for labels, p in zip(episodes, picked):
                np.testing.assert_array_equal(p[-int(labels.sum()):], np.flatnonzero(labels))  # all positives
                negatives = p[: len(p) - int(labels.sum())]
                assert len(set(negatives.tolist())) == len(negatives)
            seen.update(picked[2][:10].tolist())
            if not quirk:
                assert all(middle[i] == 0 for i in picked[2][:10])
    # Quirk: positions within the 35 negatives, used as frame indices -> frames 0..34, early positives included.
    assert seen_quirk == set(range(35))
    assert seen_uniform == set(np.flatnonzero(middle == 0).tolist())


def test_hard_negatives_are_the_frames_just_before_success():
    episodes = [np.r_[np.zeros(30), np.ones(5)].astype(int), np.r_[np.zeros(2), np.ones(3)].astype(int),
                np.zeros(12, int)]  # a short one and one that never succeeds
    for quirk in (True, False):
        plain = balance_episode_samples(episodes, 10, np.random.default_rng(1), quirk=quirk)
        hard = balance_episode_samples(episodes, 10, np.random.default_rng(1), quirk=quirk, hard=3)
        for labels, p, h in zip(episodes, plain, hard):
            n_pos, drawn = int(labels.sum()), len(p) - int(labels.sum())
            np.testing.assert_array_equal(h[:drawn], p[:drawn])  # the same draws
            np.testing.assert_array_equal(h[len(h) - n_pos:], p[drawn:])  # the same positives
            near = np.flatnonzero(labels)[0] - np.arange(3, 0, -1) if n_pos else np.zeros(0, int)
            near = near[near >= 0]
            assert set(h.tolist()) == set(p.tolist()) | set(near.tolist())
            np.testing.assert_array_equal(h[drawn:len(h) - n_pos], [i for i in near if i not in p[:drawn]])
        assert len(hard[0]) > len(plain[0]) or set(range(27, 30)) <= set(plain[0].tolist())


def test_classifier_learns_separable_toy_problem():
    cfg = RewardSpec(embed_hidden=32, embed_dim=16, head_hidden=32, tau=0.5, ce_weight=0.5, lr=1e-3)
    rng = np.random.default_rng(0)
    direction = rng.normal(size=24)
    direction /= np.linalg.norm(direction)

    def data(n):
        labels = rng.integers(0, 2, n)
        features = rng.normal(size=(n, 24)) + np.outer(2.0 * labels - 1.0, 2.0 * direction)
        return jnp.asarray(features, jnp.float32), jnp.asarray(labels)

    train_x, train_y = data(256)
    val_x, val_y = data(200)
    state = create_reward_state(jax.random.key(0), cfg, 24)
    update = make_reward_update(cfg)
    before = evaluate_classifier(state.params, val_x, val_y)
    losses = []
    for epoch in range(15):
        order = rng.permutation(256)
        for start in range(0, 256, 32):
            idx = order[start : start + 32]
            state, metrics = update(state, RewardBatch(features=train_x[idx], labels=train_y[idx]))
            losses.append(float(metrics["loss"]))
    after = evaluate_classifier(state.params, val_x, val_y)
    assert after["accuracy"] >= 0.97 and after["precision"] >= 0.95 and after["recall"] >= 0.95, (before, after)
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    pred = np.argmax(np.asarray(classifier_logits(state.params, val_x)), 1)
    assert after["accuracy"] == pytest.approx(np.mean(pred == np.asarray(val_y)))
