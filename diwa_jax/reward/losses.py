"""Classifier losses (spec section 5.4) and precision/recall."""
import jax
import jax.numpy as jnp

from diwa_jax.reward.classifier import classifier_embed, classifier_head


def supcon_ntxent(embeddings: jnp.ndarray, labels: jnp.ndarray, tau: float) -> jnp.ndarray:
    """Supervised-contrastive NT-Xent on L2-normalised ``embeddings (B, D)`` with integer ``labels (B,)``.

    Logits = cosine / tau; each anchor's log-softmax runs over all other samples (self excluded); positives are
    the other samples of the anchor's class. Loss = -mean over anchors with >= 1 positive of the mean
    positive log-prob (0 when no anchor has a positive).
    """
    z = embeddings / jnp.maximum(jnp.linalg.norm(embeddings, axis=-1, keepdims=True), 1e-12)
    logits = z @ z.T / tau
    not_self = ~jnp.eye(labels.shape[0], dtype=bool)
    # A finite mask value (|logits| <= 1/tau) keeps a batch of one finite, with zero loss and gradient.
    log_prob = logits - jax.nn.logsumexp(jnp.where(not_self, logits, -1e9), axis=-1, keepdims=True)
    positive = (labels[:, None] == labels[None, :]) & not_self
    n_positive = positive.sum(axis=-1)
    mean_positive = jnp.where(positive, log_prob, 0.0).sum(axis=-1) / jnp.maximum(n_positive, 1)
    has_positive = n_positive > 0
    return -jnp.sum(jnp.where(has_positive, mean_positive, 0.0)) / jnp.maximum(has_positive.sum(), 1)


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Mean softmax cross-entropy of ``logits (B, C)`` against integer ``labels (B,)``."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1))


def classifier_loss(params: dict, features: jnp.ndarray, labels: jnp.ndarray, *, tau: float, ce_weight: float):
    """``ntxent + ce_weight * ce`` -> ``(loss, {"ntxent", "ce"})``."""
    embedding = classifier_embed(params, features)
    ntxent = supcon_ntxent(embedding, labels, tau)
    ce = cross_entropy(classifier_head(params, embedding), labels)
    return ntxent + ce_weight * ce, {"ntxent": ntxent, "ce": ce}


def precision_recall(pred: jnp.ndarray, labels: jnp.ndarray) -> tuple:
    """Precision and recall of binary predictions for class 1; 0 where the denominator is 0."""
    pred, labels = pred.astype(bool), labels.astype(bool)
    true_pos = jnp.sum(pred & labels)
    precision = jnp.where(pred.sum() > 0, true_pos / jnp.maximum(pred.sum(), 1), 0.0)
    recall = jnp.where(labels.sum() > 0, true_pos / jnp.maximum(labels.sum(), 1), 0.0)
    return precision, recall
