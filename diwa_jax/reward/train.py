"""Training and evaluation of the latent reward classifier (spec sections 5.3-5.4)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from diwa_jax.reward.classifier import RewardSpec, classifier_logits, init_classifier
from diwa_jax.reward.losses import classifier_loss, precision_recall


@struct.dataclass
class RewardBatch:
    features: jnp.ndarray  # (B, latent)
    labels: jnp.ndarray  # (B,) int, 1 = success


@struct.dataclass
class RewardTrainState:
    step: jnp.ndarray
    params: dict
    opt_state: optax.OptState


def reward_optimizer(spec: RewardSpec) -> optax.GradientTransformation:
    return optax.adam(spec.lr)  # PyTorch Adam defaults: betas 0.9/0.999, eps 1e-8, no decay


def create_reward_state(key: jax.Array, spec: RewardSpec, latent_dim: int) -> RewardTrainState:
    params = init_classifier(key, spec, latent_dim)
    return RewardTrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=reward_optimizer(spec).init(params)
    )


def make_reward_update(spec: RewardSpec):
    """Jitted ``update(state, batch: RewardBatch) -> (state, {"loss", "ntxent", "ce"})``; one Adam step on
    ``ntxent + ce_weight * ce``. Give it batches of one size (drop or pad the last one) to compile once."""
    optimizer = reward_optimizer(spec)

    @jax.jit
    def update(state: RewardTrainState, batch: RewardBatch):
        (loss, parts), grads = jax.value_and_grad(classifier_loss, has_aux=True)(
            state.params, batch.features, batch.labels, tau=spec.tau, ce_weight=spec.ce_weight
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_state = RewardTrainState(
            step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state
        )
        return new_state, {"loss": loss, **parts}

    return update


def balance_episode_samples(
    labels_per_episode: list, n_neg: int, rng: np.random.Generator, quirk: bool = True, hard: int = 0
) -> list:
    """Frame indices to train on, per episode: ``min(n_neg, #negatives)`` random negatives + all positives,
    plus (``hard`` > 0) the ``hard`` negative frames just before the first positive where not drawn already:
    the states nearest the success threshold, which random draws rarely pick.

    ``quirk=True`` (the original, default): the negatives are drawn as positions *within the list of negative
    frames* and then used as frame indices, i.e. uniformly among the first ``#negatives`` frames of the episode
    (the same as uniform negatives when the positives are a suffix; otherwise early positives may be drawn,
    with their own label, and appear twice). ``quirk=False``: uniform among the negative frames.
    Returns one int64 array per episode: the drawn negatives' indices, the hard ones', then the positives'.
    The draws do not depend on ``hard``.
    """
    selected = []
    for episode, labels in enumerate(labels_per_episode):
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"balance_episode_samples: episode {episode} labels must be 1-D, got shape {labels.shape}")
        negatives, positives = np.flatnonzero(labels == 0), np.flatnonzero(labels != 0)
        picks = rng.choice(len(negatives), size=min(n_neg, len(negatives)), replace=False)
        chosen_negatives = picks if quirk else negatives[picks]
        before = negatives[negatives < positives[0]] if len(positives) else negatives[:0]
        near = before[len(before) - min(hard, len(before)):]
        near = near[~np.isin(near, chosen_negatives)]
        selected.append(np.concatenate([chosen_negatives, near, positives]).astype(np.int64))
    return selected


@jax.jit
def _classifier_counts(params: dict, features: jnp.ndarray, labels: jnp.ndarray) -> dict:
    pred = jnp.argmax(classifier_logits(params, features), axis=-1)
    precision, recall = precision_recall(pred, labels)
    return {"precision": precision, "recall": recall, "accuracy": jnp.mean(pred == labels)}


def evaluate_classifier(params: dict, features, labels) -> dict:
    """Argmax predictions on ``features (N, latent)`` vs ``labels (N,)`` -> floats precision, recall, accuracy."""
    metrics = _classifier_counts(params, jnp.asarray(features), jnp.asarray(labels))
    return {name: float(value) for name, value in metrics.items()}
