"""A model's search space as each searcher sees it, and the points tried first.

TPE takes log scales, integers and choices natively. BayesOptSearch takes continuous
ranges only, so for it a log range is searched as its logarithm, and a choice as an
index in [0, n); `decode_value` maps a searcher's values back to the model's own.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

from ray import tune as ray_tune

from poster_ray.config import POOLINGS, TRANSFER_MODELS, VIEW_COUNTS, TrainConfig, TuneSettings
from poster_ray.errors import PosterRayError
from poster_ray.hparams import FEATURE_KEYS, Choice, Range, point_settings

FEATURE_VALUES = {"views": VIEW_COUNTS, "pooling": POOLINGS}
assert tuple(FEATURE_VALUES) == FEATURE_KEYS


def feature_choices(base: TrainConfig, settings: TuneSettings) -> dict[str, Choice]:
    """The features tuning searches too (`settings.feature_choices`), each checked: a
    transfer model's, known values, and the base's own among them (the first trial is
    the untuned model)."""
    choices = settings.feature_choices
    if choices and base.model not in TRANSFER_MODELS:
        raise PosterRayError(f"--feature-choices needs a pretrained model, not {base.model}")
    space = {}
    for key, values in choices.items():
        if key not in FEATURE_VALUES:
            raise PosterRayError(
                f"--feature-choices: {key!r} is not searchable; choose among {list(FEATURE_KEYS)}"
            )
        allowed = FEATURE_VALUES[key]
        if not isinstance(values, list) or not values or any(v not in allowed for v in values):
            raise PosterRayError(
                f"--feature-choices: {key} must be a list of values among {list(allowed)}"
            )
        if getattr(base, key) not in values:
            raise PosterRayError(
                f"--feature-choices: {key} must include --{key} ({getattr(base, key)!r}), "
                "what the first trial, the untuned model, trains on"
            )
        space[key] = Choice(tuple(dict.fromkeys(values)))
    return space


def feature_combinations(choices: dict[str, Choice]) -> list[dict]:
    """Every combination of the searched features' values: one training data each."""
    return [
        dict(zip(choices, values, strict=True))
        for values in itertools.product(*(choice.values for choice in choices.values()))
    ]


def features_key(config: TrainConfig) -> tuple:
    """What tells apart the training data of two trials."""
    return tuple(getattr(config, key) for key in FEATURE_KEYS)


def with_features(point: dict, base: TrainConfig, choices: dict[str, Choice]) -> dict:
    """A point tried first, with each searched feature the base's unless it says."""
    return {**{key: getattr(base, key) for key in choices}, **point}


def limit_batch_sizes(space: dict, max_batch: int) -> dict:
    """`space` without batch sizes larger than the training split allows (a trial
    proposing one could only fail)."""
    space = dict(space)
    batches = tuple(size for size in space["batch_size"].values if size <= max_batch)
    if not batches:
        raise PosterRayError(
            f"the training split is too small for any batch size tuning tries "
            f"({space['batch_size'].values}): at most {max_batch} posters per step"
        )
    space["batch_size"] = Choice(batches)
    return space


def search_domain(param: Range | Choice, searcher: str):
    """The Tune domain of one hyperparameter, for `searcher`."""
    if searcher == "gp":
        if isinstance(param, Choice):
            return ray_tune.uniform(0, len(param.values))
        if param.log:
            return ray_tune.uniform(math.log(param.low), math.log(param.high))
        return ray_tune.uniform(param.low, param.high)
    if isinstance(param, Choice):
        return ray_tune.choice(list(param.values))
    if param.integer:
        return (ray_tune.lograndint if param.log else ray_tune.randint)(param.low, param.high + 1)
    return (ray_tune.loguniform if param.log else ray_tune.uniform)(param.low, param.high)


def param_space(space: dict, searcher: str) -> dict:
    """The Tuner's param_space of a model's search space."""
    return {key: search_domain(param, searcher) for key, param in space.items()}


def decode_value(param: Range | Choice, value, searcher: str):
    """A searcher's value as the hyperparameter's own (see `search_domain`)."""
    if isinstance(param, Choice):
        if searcher == "gp":
            return param.values[min(int(value), len(param.values) - 1)]
        return value
    if searcher == "gp" and param.log:
        value = math.exp(value)
    value = min(max(value, param.low), param.high)
    return int(round(value)) if param.integer else float(value)


def encode_value(param: Range | Choice, value, searcher: str):
    """The inverse of `decode_value`, for the points tried first."""
    if searcher != "gp":
        return value
    if isinstance(param, Choice):
        return param.values.index(value) + 0.5
    return math.log(value) if param.log else float(value)


def check_in_space(space: dict, point: dict) -> None:
    """A start point must be one the searcher could propose, or its result misleads it."""
    if point.keys() != space.keys():
        raise PosterRayError(f"start point {point} must set exactly: {', '.join(space)}")
    for key, param in space.items():
        inside = (
            point[key] in param.values
            if isinstance(param, Choice)
            else param.low <= point[key] <= param.high
        )
        if not inside:
            raise PosterRayError(f"start point {key}={point[key]} is outside the space: {param}")


def decode_point(space: dict, point: dict, searcher: str) -> dict:
    return {key: decode_value(space[key], point[key], searcher) for key in space}


def encode_point(space: dict, point: dict, searcher: str) -> dict:
    return {key: encode_value(space[key], point[key], searcher) for key in space}


def point_config(base: TrainConfig, point: dict) -> TrainConfig:
    """The TrainConfig of one point of the model's search space."""
    return replace(base, **point_settings(base.model, point))
