"""What tuning searches, per model, beside each model's untuned default."""

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


# What tuning searches, per model, beside each model's untuned default (the builders' and
# TrainConfig's defaults, which tuning tries first). The CNN's `filters` is its first
# block's width and `dense_units` its first dense layer's: later blocks double the
# filters and the second dense layer halves the units, as in the seed (16-32-64-64, 128-64).
SEARCH_SPACES = {
    "custom_cnn": {
        "learning_rate": Range(1e-4, 3e-3, log=True),
        "batch_size": Choice((16, 32, 64)),
        "filters": Range(8, 32, log=True, integer=True),
        "kernel_size": Choice((3, 5)),
        "conv_dropout": Range(0.0, 0.4),
        "dense_units": Range(32, 256, log=True, integer=True),
        "dense_dropout": Range(0.0, 0.5),
    },
    "vgg16": {
        "learning_rate": Range(1e-5, 1e-3, log=True),
        "batch_size": Choice((16, 32)),
        "dense_units": Range(64, 512, log=True, integer=True),
        "dropout": Range(0.0, 0.6),
        "trainable_blocks": Choice((0, 1, 2)),
    },
}
DEFAULT_POINTS = {
    "custom_cnn": {
        "learning_rate": 1e-3,
        "batch_size": 32,
        "filters": 16,
        "kernel_size": 5,
        "conv_dropout": 0.25,
        "dense_units": 128,
        "dense_dropout": 0.1,
    },
    "vgg16": {
        "learning_rate": 1e-3,
        "batch_size": 32,
        "dense_units": 256,
        "dropout": 0.5,
        "trainable_blocks": 0,
    },
}
assert all(DEFAULT_POINTS[name].keys() == SEARCH_SPACES[name].keys() for name in SEARCH_SPACES)


def split_point(name: str, point: dict) -> tuple[float, int, dict]:
    """(learning rate, batch size, builder hyperparameters) of a point of a search space."""
    hparams = {
        key: value for key, value in point.items() if key not in ("learning_rate", "batch_size")
    }
    if name == "custom_cnn":
        width, units = hparams["filters"], hparams["dense_units"]
        hparams.update(
            filters=[width, 2 * width, 4 * width, 4 * width], dense_units=[units, units // 2]
        )
    return point["learning_rate"], point["batch_size"], hparams
