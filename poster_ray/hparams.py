"""How a search space is written, and what a point of one sets: TensorFlow-free, so
that Tune's trial processes, which only start Ray Train runs, never import it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """A numeric hyperparameter from low to high, inclusive; log spaces search ratios."""

    low: float
    high: float
    log: bool = False
    integer: bool = False


@dataclass(frozen=True)
class Choice:
    """A hyperparameter taking one of a few values."""

    values: tuple


# What a transfer model's head trains on, which tuning may search too (TuneSettings.
# feature_choices): each value is its own feature cache, read before the trials start.
FEATURE_KEYS = ("views", "pooling")
# The searched keys that are training settings (TrainConfig fields), not architecture.
TRAINING_KEYS = ("learning_rate", "batch_size", "loss", *FEATURE_KEYS)


def point_settings(name: str, point: dict) -> dict:
    """The TrainConfig fields a point of model `name`'s search space sets.

    The CNN's `filters` is its first block's width and `dense_units` its first dense
    layer's: later blocks double the filters and the second dense layer halves the
    units, as in the seed (16-32-64-64, 128-64)."""
    settings = {key: point[key] for key in TRAINING_KEYS if key in point}
    hparams = {key: value for key, value in point.items() if key not in TRAINING_KEYS}
    if name == "custom_cnn":
        width, units = hparams["filters"], hparams["dense_units"]
        hparams.update(
            filters=[width, 2 * width, 4 * width, 4 * width], dense_units=[units, units // 2]
        )
    return {**settings, "hparams": hparams}
