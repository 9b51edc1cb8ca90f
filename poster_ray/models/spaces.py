"""What tuning searches, per model, beside each model's untuned default."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from poster_ray.config import TRANSFER_MODELS, TrainConfig
from poster_ray.hparams import Choice, Range
from poster_ray.models.cnn import build_custom_cnn
from poster_ray.models.heads import build_head
from poster_ray.models.losses import LOSSES


def keyword_defaults(builder: Callable) -> dict:
    """A model builder's keyword defaults: its untuned architecture, written once, in its
    signature."""
    parameters = inspect.signature(builder).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


# What tuning searches, per model, beside each model's untuned default (the builders' and
# TrainConfig's defaults, which tuning tries first); hparams.point_settings turns a
# point into the builders' arguments.
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
SEARCH_SPACES = {"custom_cnn": CNN_SPACE, **dict.fromkeys(TRANSFER_MODELS, HEAD_SPACE)}
DEFAULT_POINTS = {"custom_cnn": CNN_DEFAULT, **dict.fromkeys(TRANSFER_MODELS, HEAD_DEFAULT)}
assert all(DEFAULT_POINTS[name].keys() == SEARCH_SPACES[name].keys() for name in SEARCH_SPACES)
