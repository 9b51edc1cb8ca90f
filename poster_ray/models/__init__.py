"""Models: each takes RGB uint8 posters and does its own scaling in its first layer.

So the data pipeline and inference never scale, and a bundle needs no preprocessing
code. Preprocessing uses built-in layers only (no Lambda), so saved models load with
Keras ``safe_mode=True``. Search spaces for tuning sit beside the builders.
"""

from __future__ import annotations

from pathlib import Path

from poster_ray.config import MODEL_NAMES
from poster_ray.errors import PosterRayError
from poster_ray.models.cnn import build_custom_cnn
from poster_ray.models.heads import genre_head
from poster_ray.models.spaces import DEFAULT_POINTS, SEARCH_SPACES, Choice, Range, split_point
from poster_ray.models.vgg16 import build_vgg16
from poster_ray.resources import set_keras_precision
from poster_ray.tf_import import keras

__all__ = [
    "DEFAULT_POINTS",
    "SEARCH_SPACES",
    "Choice",
    "Range",
    "build_custom_cnn",
    "build_model",
    "build_vgg16",
    "compile_model",
    "genre_head",
    "load_model",
    "split_point",
    "with_precision",
]

_BUILDERS = {"custom_cnn": build_custom_cnn, "vgg16": build_vgg16}
assert tuple(_BUILDERS) == MODEL_NAMES == tuple(SEARCH_SPACES)


def build_model(
    name: str, num_genres: int, image_size: int, precision: str = "float32", **hparams
) -> keras.Model:
    """Build the model called ``name`` with its hyperparameters, in ``precision``
    ("float32", "bfloat16" or "float16": see ``resources.resolve_precision``)."""
    if name not in _BUILDERS:
        raise PosterRayError(f"Unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    set_keras_precision(precision)
    return _BUILDERS[name](num_genres, image_size=image_size, **hparams)


def compile_model(model: keras.Model, learning_rate: float = 1e-3) -> None:
    """Adam on binary cross-entropy: one independent yes/no decision per genre.

    Under mixed_float16, ``Model.compile`` wraps the optimizer in a LossScaleOptimizer
    itself; bfloat16 has float32's range and needs no loss scaling. The metrics keep
    float32 state under any policy: with the global mixed policy they would get
    autocast variables, and under MultiWorkerMirroredStrategy PR-AUC's result (which
    slices its accumulators, a `read_value()` of a sync-on-read variable) then fails
    at the first epoch's end.
    """
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
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
    is exported as float32, and inference picks the precision of its own hardware.
    """
    policy = "float32" if precision == "float32" else f"mixed_{precision}"

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


def load_model(path: str | Path) -> keras.Model:
    """Load a saved model for inference, refusing any code embedded in it (safe mode)."""
    if not Path(path).exists():
        raise PosterRayError(f"Model file not found: {path}")
    return keras.models.load_model(path, compile=False, safe_mode=True)
