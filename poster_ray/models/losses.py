"""Losses for imbalanced multi-label genres.

Drama is on half the posters and Western on a handful: plain binary cross-entropy lets
rare genres' few positives drown in their negatives. The options: positive-weighted
cross-entropy, focal loss (down-weights easy examples) and the asymmetric loss of
Ridnik et al. (2021), which focuses harder on negatives and ignores the easiest ones.
The custom losses are registered, so checkpoints that hold them reload in workers.
"""

from __future__ import annotations

import numpy as np

from poster_ray.config import LOSSES
from poster_ray.errors import PosterRayError
from poster_ray.tf_import import keras, tf

EPSILON = 1e-7


def positive_weights(train_labels: np.ndarray, cap: float = 10.0) -> list[float]:
    """Per genre sqrt(negatives / positives), capped: rare genres count more, without
    letting a 3-poster genre dominate the loss."""
    positives = train_labels.sum(axis=0).astype(float)
    negatives = len(train_labels) - positives
    weights = np.sqrt(negatives / np.maximum(positives, 1.0))
    return np.clip(weights, 1.0, cap).round(4).tolist()


@keras.saving.register_keras_serializable(package="poster_ray")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy whose positive terms are weighted per genre."""

    def __init__(self, weights: list[float], name: str = "weighted_bce", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.weights = list(weights)

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, y_pred.dtype)
        p = tf.clip_by_value(y_pred, EPSILON, 1 - EPSILON)
        weights = tf.constant(self.weights, dtype=y_pred.dtype)
        loss = -(weights * y_true * tf.math.log(p) + (1 - y_true) * tf.math.log(1 - p))
        return tf.reduce_mean(loss, axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "weights": self.weights}


@keras.saving.register_keras_serializable(package="poster_ray")
class AsymmetricLoss(keras.losses.Loss):
    """ASL: positives weighted by (1-p)^gamma_pos, negatives by p_m^gamma_neg where
    p_m = max(p - clip, 0) shifts easy negatives' probability to exactly 0."""

    def __init__(
        self,
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        name: str = "asymmetric",
        **kwargs,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, y_pred.dtype)
        p = tf.clip_by_value(y_pred, EPSILON, 1 - EPSILON)
        shifted = tf.maximum(p - self.clip, 0.0)
        positive = y_true * tf.pow(1 - p, self.gamma_pos) * tf.math.log(p)
        negative = (1 - y_true) * tf.pow(shifted, self.gamma_neg) * tf.math.log(1 - shifted)
        return -tf.reduce_mean(positive + negative, axis=-1)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "gamma_neg": self.gamma_neg,
            "gamma_pos": self.gamma_pos,
            "clip": self.clip,
        }


def make_loss(name: str, weights: list[float] | None = None) -> keras.losses.Loss:
    """The loss called `name`; `weights` (per genre) for weighted_bce."""
    if name == "bce":
        return keras.losses.BinaryCrossentropy()
    if name == "weighted_bce":
        if weights is None:
            raise ValueError("weighted_bce needs per-genre positive weights")
        return WeightedBinaryCrossentropy(weights)
    if name == "focal":
        return keras.losses.BinaryFocalCrossentropy(gamma=2.0)
    if name == "asymmetric":
        return AsymmetricLoss()
    raise PosterRayError(f"unknown loss {name!r}; choose one of {LOSSES}")
