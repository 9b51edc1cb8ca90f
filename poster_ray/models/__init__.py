"""Models: each takes RGB uint8 posters and does its own scaling in its first layer.

So the data pipeline and inference never scale, and a bundle needs no preprocessing
code. Preprocessing uses built-in layers only (no Lambda), so saved models load with
Keras ``safe_mode=True``. Search spaces for tuning sit beside the builders.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from poster_ray.config import MODEL_NAMES
from poster_ray.errors import PosterRayError
from poster_ray.models.backbones import BACKBONES
from poster_ray.models.cnn import build_custom_cnn
from poster_ray.models.heads import build_head, genre_head
from poster_ray.models.losses import LOSSES, make_loss
from poster_ray.models.optimizers import make_optimizer
from poster_ray.models.spaces import DEFAULT_POINTS, SEARCH_SPACES
from poster_ray.models.transfer import backbone_models, build_transfer
from poster_ray.resources import set_keras_precision
from poster_ray.tf_import import keras, tf

__all__ = [
    "DEFAULT_POINTS",
    "LOSSES",
    "SEARCH_SPACES",
    "backbone_models",
    "build_custom_cnn",
    "build_head_model",
    "build_model",
    "compile_model",
    "genre_head",
    "inference_function",
    "input_size",
    "is_transfer",
    "load_model",
    "make_loss",
    "native_size",
    "with_precision",
]

assert ("custom_cnn", *BACKBONES) == MODEL_NAMES and set(MODEL_NAMES) == set(SEARCH_SPACES)


def is_transfer(name: str) -> bool:
    """Whether model `name` is a pretrained backbone under a genre head."""
    return name in BACKBONES


def native_size(name: str) -> int:
    """The input size a transfer model's backbone was pretrained at."""
    return BACKBONES[name].native_size


def input_size(name: str, run_size: int, override: int | None = None) -> int:
    """The poster size model `name` takes: the CNN the run's own (`run_size`), a transfer
    model its backbone's native resolution unless `override` says otherwise."""
    if is_transfer(name):
        return override or native_size(name)
    return run_size


def build_model(
    name: str, num_genres: int, image_size: int, precision: str = "float32", **hparams
) -> keras.Model:
    """Build the model called ``name`` with its hyperparameters, in ``precision``
    ("float32", "bfloat16" or "float16": see ``resources.resolve_precision``)."""
    if name not in MODEL_NAMES:
        raise PosterRayError(f"Unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    set_keras_precision(precision)
    if is_transfer(name):
        return build_transfer(num_genres, name, image_size, **hparams)
    return build_custom_cnn(num_genres, image_size=image_size, **hparams)


def build_head_model(
    num_genres: int, features: int, precision: str = "float32", **hparams
) -> keras.Model:
    """A transfer model's head alone, for training on cached features."""
    set_keras_precision(precision)
    return build_head(features, num_genres, **hparams)


def compile_model(
    model: keras.Model,
    learning_rate: float = 1e-3,
    loss: str = "bce",
    loss_weights: list[float] | None = None,
    backbone_rate: float = 1.0,
) -> None:
    """Adam on a multi-label loss: one independent yes/no decision per genre
    (binary cross-entropy by default; see models.losses for the others). A fine-tuned
    backbone's steps are `backbone_rate` times the head's (models.optimizers).

    Under mixed_float16, ``Model.compile`` wraps the optimizer in a LossScaleOptimizer
    itself; bfloat16 has float32's range and needs no loss scaling. The metrics keep
    float32 state under any policy: with the global mixed policy they would get
    autocast variables, and under MultiWorkerMirroredStrategy PR-AUC's result (which
    slices its accumulators, a `read_value()` of a sync-on-read variable) then fails
    at the first epoch's end.
    """
    model.compile(
        optimizer=make_optimizer(model, learning_rate, backbone_rate),
        loss=make_loss(loss, loss_weights),
        metrics=[
            keras.metrics.Precision(name="precision", dtype="float32"),
            keras.metrics.Recall(name="recall", dtype="float32"),
            keras.metrics.AUC(name="auc", multi_label=False, dtype="float32"),
            keras.metrics.AUC(name="pr_auc", curve="PR", multi_label=False, dtype="float32"),
        ],
    )


def with_precision(model: keras.Model, precision: str) -> keras.Model:
    """The same model (same weights) computing in ``precision``; the genre head stays
    float32. Saved models keep each layer's own policy, so a model trained in bfloat16
    is exported as float32, and inference picks the precision of its own hardware. A
    model that computes so already is returned as it is: cloning a backbone takes seconds.
    """
    policy = "float32" if precision == "float32" else f"mixed_{precision}"
    if computes_in(model, policy):
        return model

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, keras.Model):
            return with_precision(layer, precision)
        config = layer.get_config()
        if layer.name != "genres" and not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    clone.set_weights(model.get_weights())
    return clone


def computes_in(model: keras.Model, policy: str) -> bool:
    """Whether every layer that `with_precision` would change already has `policy`."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            if not computes_in(layer, policy):
                return False
        elif isinstance(layer, keras.layers.InputLayer) or layer.name == "genres":
            continue
        elif layer.dtype_policy.name != policy:
            return False
    return True


def inference_function(model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    """`model` on a batch of posters as one traced graph, for any batch size.

    `predict_on_batch` rebuilds Keras' predict step around every call: this ran 1.11x its
    rate on the 128 px CNN and 1.04x on EfficientNet-Lite0 (batches of 64, 2 cores;
    bench/infer_settings.py).
    The traced function is also safe to call from several threads at once.
    """
    spec = tf.TensorSpec((None, *model.input_shape[1:]), model.inputs[0].dtype)
    graph = tf.function(lambda images: model(images, training=False), input_signature=[spec])
    return lambda images: graph(images).numpy()


def load_model(path: str | Path) -> keras.Model:
    """Load a saved model for inference, refusing any code embedded in it (safe mode)."""
    if not Path(path).exists():
        raise PosterRayError(f"Model file not found: {path}")
    return keras.models.load_model(path, compile=False, safe_mode=True)
