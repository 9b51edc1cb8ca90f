"""Model builders: a small CNN from scratch and a VGG16 transfer-learning model.

Every model takes RGB pixels in 0..255 (uint8 or float) and does its own scaling in its
first layer, so the data pipeline and inference never scale. Preprocessing uses only
built-in layers (no Lambda), so saved models load with Keras ``safe_mode=True``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf
import tf_keras as keras

from poster_ray.config import MODEL_NAMES
from poster_ray.errors import PosterRayError

# The file name, URL and md5 that tf_keras.applications.VGG16 itself uses for "imagenet".
VGG16_WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
VGG16_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/" + VGG16_WEIGHTS_FILE
)
VGG16_WEIGHTS_MD5 = "6d6bbae143d832006294945121d1f1fc"

# ImageNet VGG16 was trained on "caffe" inputs: BGR, minus these per-channel means, unscaled.
IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)
VGG16_BLOCKS = ("block1", "block2", "block3", "block4", "block5")


def build_custom_cnn(
    num_genres: int,
    image_size: int = 250,
    filters: Sequence[int] = (16, 32, 64, 64),
    kernel_size: int = 5,
    conv_dropout: float = 0.25,
    dense_units: Sequence[int] = (128, 64),
    dense_dropout: float = 0.1,
) -> keras.Model:
    """The seed report's CNN: conv/pool/dropout blocks, then a dense head.

    Convolutions use valid padding, as in the report, so the defaults give exactly
    1,168,952 parameters at 250x250 with 24 genres.
    """
    inputs = keras.Input(shape=(image_size, image_size, 3))
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    for n_filters in filters:
        x = keras.layers.Conv2D(n_filters, kernel_size, activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
        x = keras.layers.Dropout(conv_dropout)(x)
    x = keras.layers.Flatten()(x)
    for units in dense_units:
        x = keras.layers.Dense(units, activation="relu")(x)
        x = keras.layers.Dropout(dense_dropout)(x)
    outputs = genre_head(num_genres)(x)
    return keras.Model(inputs, outputs, name="custom_cnn")


def genre_head(num_genres: int) -> keras.layers.Layer:
    """One independent sigmoid per genre (multi-label), kept float32 under mixed precision."""
    return keras.layers.Dense(num_genres, activation="sigmoid", dtype="float32", name="genres")


def keras_cache_dir() -> Path:
    """The directory whose ``models/`` subfolder holds downloaded Keras weights.

    tf-keras' ``get_file`` ignores ``KERAS_HOME`` (only keras.json honours it) and falls
    back to /tmp/.keras when the directory is not writable (or does not exist yet). We
    honour ``KERAS_HOME`` like Keras 3 does, keep that fallback, and pass the result to
    ``get_file`` so that the lookup and the download agree on one place.
    """
    home = os.path.expanduser(os.environ.get("KERAS_HOME") or os.path.join("~", ".keras"))
    if not os.access(home, os.W_OK):
        home = os.path.join("/tmp", ".keras")
    return Path(home)


def resolve_vgg16_weights(weights: str) -> str | None:
    """Turn ``--weights`` ("none", "imagenet" or a .h5 path) into what VGG16 accepts.

    "imagenet" is looked up in the Keras cache first, so offline machines work once the
    file has been copied there; otherwise it is downloaded, and if that fails the error
    says exactly where to put which file.
    """
    if weights == "none":
        return None
    if weights != "imagenet":
        if not Path(weights).is_file():
            raise PosterRayError(f"VGG16 weights file not found: {weights}")
        return weights
    cache_dir = keras_cache_dir()
    cached = cache_dir / "models" / VGG16_WEIGHTS_FILE
    if cached.is_file():
        return str(cached)
    try:
        return keras.utils.get_file(
            VGG16_WEIGHTS_FILE,
            origin=VGG16_WEIGHTS_URL,
            cache_subdir="models",
            file_hash=VGG16_WEIGHTS_MD5,
            cache_dir=str(cache_dir),
        )
    except Exception as err:  # get_file raises a bare Exception on network errors
        reason = " ".join(str(err).split())
        raise PosterRayError(
            f"ImageNet weights {VGG16_WEIGHTS_FILE} are not in {cached.parent} and could "
            f"not be downloaded ({reason}); download {VGG16_WEIGHTS_URL} into "
            f"{cached.parent}, or use --weights none to train from scratch"
        ) from err


def build_vgg16(
    num_genres: int,
    image_size: int = 250,
    weights: str = "none",
    trainable_blocks: int = 0,
    dense_units: int = 256,
    dropout: float = 0.5,
) -> keras.Model:
    """VGG16's convolutional base under a small dense head, for transfer learning.

    ``trainable_blocks`` unfreezes the last k conv blocks (block5 first) for
    fine-tuning; 0 trains only the head.
    """
    if not 0 <= trainable_blocks <= len(VGG16_BLOCKS):
        raise PosterRayError(
            f"trainable_blocks must be between 0 and {len(VGG16_BLOCKS)}, got {trainable_blocks}"
        )
    shape = (image_size, image_size, 3)
    base = vgg16_base(shape, resolve_vgg16_weights(weights))
    freeze_vgg16_blocks(base, trainable_blocks)

    inputs = keras.Input(shape=shape)
    x = caffe_preprocessing()(inputs)
    x = base(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(dense_units, activation="relu")(x)
    x = keras.layers.Dropout(dropout)(x)
    outputs = genre_head(num_genres)(x)
    return keras.Model(inputs, outputs, name="vgg16_transfer")


def caffe_preprocessing() -> keras.layers.Layer:
    """Subtract the ImageNet channel means, unscaled, as VGG16's weights expect.

    A Rescaling layer with a per-channel offset does this with no parameters and loads in
    safe mode, unlike a Lambda around ``vgg16.preprocess_input``. The channel order is
    handled in the weights instead (see ``vgg16_base``), so inputs stay RGB.
    """
    return keras.layers.Rescaling(
        scale=1.0, offset=[-m for m in IMAGENET_MEAN_RGB], name="caffe_preprocessing"
    )


def vgg16_base(shape: tuple[int, int, int], weights_path: str | None) -> keras.Model:
    """The VGG16 conv base, made to consume RGB inputs.

    The pretrained first convolution expects BGR; reversing its kernel's input-channel
    axis is exactly equivalent to reversing the input's channels, at no runtime cost.
    """
    base = keras.applications.VGG16(include_top=False, weights=weights_path, input_shape=shape)
    if weights_path is not None:
        conv = base.get_layer("block1_conv1")
        kernel, bias = conv.get_weights()
        conv.set_weights([kernel[:, :, ::-1, :], bias])
    return base


def freeze_vgg16_blocks(base: keras.Model, trainable_blocks: int) -> None:
    """Train only the last ``trainable_blocks`` conv blocks of ``base``; freeze the rest."""
    trainable = VGG16_BLOCKS[len(VGG16_BLOCKS) - trainable_blocks :]
    for layer in base.layers:
        layer.trainable = layer.name.split("_")[0] in trainable


_BUILDERS = {"custom_cnn": build_custom_cnn, "vgg16": build_vgg16}
assert tuple(_BUILDERS) == MODEL_NAMES


# ------------------------------------------------------------ search spaces for tuning


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
assert all(DEFAULT_POINTS[name].keys() == SEARCH_SPACES[name].keys() for name in MODEL_NAMES)


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


def set_precision_policy(mixed_precision: bool) -> str:
    """Set the global Keras dtype policy, every time, so one call never leaks into the next.

    Mixed precision means float16 on a GPU and bfloat16 on CPUs with native bfloat16
    instructions; elsewhere it stays float32, because emulated bfloat16 is slower (the
    custom CNN trained 8x slower in bfloat16 on an AMD EPYC without AVX512_BF16).
    """
    if not mixed_precision:
        policy = "float32"
    elif tf.config.list_physical_devices("GPU"):
        policy = "mixed_float16"
    elif cpu_has_bfloat16():
        policy = "mixed_bfloat16"
    else:
        print("mixed precision: this CPU has no native bfloat16 (AVX512_BF16/AMX); using float32")
        policy = "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def cpu_has_bfloat16() -> bool:
    """Whether the CPU computes bfloat16 natively (Linux: the flags in /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def build_model(
    name: str,
    num_genres: int,
    image_size: int,
    mixed_precision: bool = False,
    **hparams,
) -> keras.Model:
    """Build the model called ``name`` with its hyperparameters, under the right precision."""
    if name not in _BUILDERS:
        raise PosterRayError(f"Unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    set_precision_policy(mixed_precision)
    return _BUILDERS[name](num_genres, image_size=image_size, **hparams)


def compile_model(model: keras.Model, learning_rate: float = 1e-3) -> None:
    """Adam on binary cross-entropy: one independent yes/no decision per genre.

    Under mixed_float16, ``Model.compile`` wraps the optimizer in a LossScaleOptimizer
    itself; bfloat16 has float32's range and needs no loss scaling.
    """
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[
            keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
            keras.metrics.AUC(name="auc", multi_label=False),
            keras.metrics.AUC(name="pr_auc", curve="PR", multi_label=False),
        ],
    )


def load_model(path: str | Path) -> keras.Model:
    """Load a saved model for inference, refusing any code embedded in it (safe mode)."""
    if not Path(path).exists():
        raise PosterRayError(f"Model file not found: {path}")
    return keras.models.load_model(path, compile=False, safe_mode=True)
