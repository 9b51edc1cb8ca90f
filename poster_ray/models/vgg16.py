"""VGG16's ImageNet convolutional base under a small genre head: the report's transfer model.

Weights come from the Keras cache (or a download), or a local .h5 file; offline, a
missing file stops with one line saying where to put which file.
"""

from __future__ import annotations

import os
from pathlib import Path

from poster_ray.errors import PosterRayError
from poster_ray.models.heads import genre_head
from poster_ray.tf_import import keras

# The file name, URL and md5 that tf_keras.applications.VGG16 itself uses for "imagenet".
VGG16_WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
VGG16_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/" + VGG16_WEIGHTS_FILE
)
VGG16_WEIGHTS_MD5 = "6d6bbae143d832006294945121d1f1fc"

# ImageNet VGG16 was trained on "caffe" inputs: BGR, minus these per-channel means, unscaled.
IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)
VGG16_BLOCKS = ("block1", "block2", "block3", "block4", "block5")


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
