"""What tuning searches, per model, beside each model's untuned default."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from poster_ray.config import TrainConfig
from poster_ray.models.cnn import build_custom_cnn
from poster_ray.models.heads import build_head
from poster_ray.models.losses import LOSSES


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


def keyword_defaults(builder: Callable) -> dict:
    """A model builder's keyword defaults: its untuned architecture, written once, in its
    signature."""
    parameters = inspect.signature(builder).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


# What tuning searches, per model, beside each model's untuned default (the builders' and
# TrainConfig's defaults, which tuning tries first). The CNN's `filters` is its first
# block's width and `dense_units` its first dense layer's: later blocks double the
# filters and the second dense layer halves the units, as in the seed (16-32-64-64, 128-64).
CNN_BUILT = keyword_defaults(build_custom_cnn)
HEAD_BUILT = keyword_defaults(build_head)
CNN_SPACE = {
    "learning_rate": Range(1e-4, 3e-3, log=True),
    "batch_size": Choice((16, 32, 64)),
    "filters": Range(8, 32, log=True, integer=True),
    "kernel_size": Choice((3, 5)),
    "conv_dropout": Range(0.0, 0.4),
    "dense_units": Range(32, 256, log=True, integer=True),
    "dense_dropout": Range(0.0, 0.5),
}
CNN_DEFAULT = {
    "learning_rate": TrainConfig.learning_rate,
    "batch_size": TrainConfig.batch_size,
    "filters": CNN_BUILT["filters"][0],
    "kernel_size": CNN_BUILT["kernel_size"],
    "conv_dropout": CNN_BUILT["conv_dropout"],
    "dense_units": CNN_BUILT["dense_units"][0],
    "dense_dropout": CNN_BUILT["dense_dropout"],
}
# A transfer model's head on its frozen backbone's cached features: cheap trials.
HEAD_SPACE = {
    "learning_rate": Range(1e-4, 3e-3, log=True),
    "batch_size": Choice((32, 64, 128)),
    "units": Choice((0, 256, 512, 1024)),
    "dropout": Range(0.0, 0.6),
    "loss": Choice(LOSSES),
}
HEAD_DEFAULT = {
    "learning_rate": TrainConfig.learning_rate,
    "batch_size": TrainConfig.batch_size,
    "units": HEAD_BUILT["units"],
    "dropout": HEAD_BUILT["dropout"],
    "loss": TrainConfig.loss,
}
TRANSFER_MODELS = (
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "vgg16",
    "resnet50",
)
SEARCH_SPACES = {"custom_cnn": CNN_SPACE, **dict.fromkeys(TRANSFER_MODELS, HEAD_SPACE)}
DEFAULT_POINTS = {"custom_cnn": CNN_DEFAULT, **dict.fromkeys(TRANSFER_MODELS, HEAD_DEFAULT)}
assert all(DEFAULT_POINTS[name].keys() == SEARCH_SPACES[name].keys() for name in SEARCH_SPACES)
# What a transfer model's head trains on, which tuning may search too (TuneSettings.
# feature_choices): each value is its own feature cache, read before the trials start.
FEATURE_KEYS = ("views", "pooling")
# The searched keys that are training settings (TrainConfig fields), not architecture.
TRAINING_KEYS = ("learning_rate", "batch_size", "loss", *FEATURE_KEYS)


def point_settings(name: str, point: dict) -> dict:
    """The TrainConfig fields a point of model `name`'s search space sets."""
    settings = {key: point[key] for key in TRAINING_KEYS if key in point}
    hparams = {key: value for key, value in point.items() if key not in TRAINING_KEYS}
    if name == "custom_cnn":
        width, units = hparams["filters"], hparams["dense_units"]
        hparams.update(
            filters=[width, 2 * width, 4 * width, 4 * width], dense_units=[units, units // 2]
        )
    return {**settings, "hparams": hparams}
