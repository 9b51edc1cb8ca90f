"""Transfer models: a pretrained backbone under a small genre head.

The head is its own sub-model ("head"), so it can be trained alone on the backbone's
cached features (seconds per epoch) and then joined to the backbone: the bundle still
holds one model that takes uint8 posters. Fine-tuning starts from that head with the
backbone's top blocks unfrozen and, optionally, augmentation layers in front (active
only in training, so inference is unchanged).
"""

from __future__ import annotations

from collections.abc import Sequence

from poster_ray.config import POOLINGS
from poster_ray.errors import PosterRayError
from poster_ray.models.backbones import BACKBONES, Backbone, freeze_blocks
from poster_ray.models.heads import build_head
from poster_ray.models.pooling import pool_features
from poster_ray.tf_import import keras


def backbone_of(name: str) -> Backbone:
    if name not in BACKBONES:
        raise PosterRayError(f"unknown backbone {name!r}; choose one of {list(BACKBONES)}")
    return BACKBONES[name]


def build_backbone(
    name: str,
    image_size: int | None = None,
    weights: str = "imagenet",
    trainable_blocks: int = 0,
    pooling: str = POOLINGS[0],
    model_name: str = "backbone",
) -> keras.Model:
    """Backbone `name` at `image_size` (default: its native size) to features pooled as
    `pooling` says (models.pooling), its last `trainable_blocks` blocks trainable (0: all
    frozen); the model is called `model_name`."""
    backbone = backbone_of(name)
    feature_map = backbone.build(image_size or backbone.native_size, weights)
    features = pool_features(feature_map.output, pooling)
    model = keras.Model(feature_map.inputs, features, name=model_name)
    freeze_blocks(model, backbone.blocks(model), trainable_blocks)
    return model


def augmentation() -> keras.Sequential:
    """Poster-safe augmentation for fine-tuning: mirror, a little zoom and shift, mild
    contrast. Built-in layers (safe mode), a no-op at inference."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomZoom(0.1),
            keras.layers.RandomTranslation(0.05, 0.05),
            keras.layers.RandomContrast(0.1),
        ],
        name="augmentation",
    )


def build_transfer(
    num_genres: int,
    backbone: str,
    image_size: int | None = None,
    weights: str = "imagenet",
    trainable_blocks: int = 0,
    augment: bool = False,
    pooling: str = POOLINGS[0],
    more_backbones: Sequence[str] = (),
    **head_hparams,
) -> keras.Model:
    """uint8 posters -> [augmentation] -> backbone(s) -> pooling -> head -> one sigmoid
    per genre. `head_hparams` are `build_head`'s (units, dropout). With `more_backbones`,
    each sees the same posters and their features are concatenated, the model's own
    first: the order of the feature caches the head trained on (features.py).

    The backbones run in inference mode (BatchNorm statistics stay ImageNet's) even where
    fine-tuning trains their top blocks: the usual choice with small datasets.
    """
    size = image_size or backbone_of(backbone).native_size  # one size for every backbone
    bases = [
        build_backbone(name, size, weights, trainable_blocks, pooling, model_name)
        for name, model_name in backbone_models(backbone, more_backbones).items()
    ]
    inputs = keras.Input(shape=bases[0].input_shape[1:])
    x = augmentation()(inputs) if augment else inputs
    features = [base(x, training=False) for base in bases]
    joined = features[0] if len(features) == 1 else keras.layers.Concatenate()(features)
    head = build_head(joined.shape[-1], num_genres, **head_hparams)
    return keras.Model(inputs, head(joined), name=f"{backbone}_transfer")


def backbone_models(backbone: str, more_backbones: Sequence[str] = ()) -> dict[str, str]:
    """Each backbone of a transfer model and its sub-model's name: the model's own is
    "backbone" (as it always was), the others "backbone_" and their name."""
    names = [backbone, *more_backbones]
    if len(set(names)) < len(names):
        raise PosterRayError(f"a backbone is named twice: {names}")
    for name in more_backbones:
        backbone_of(name)  # a known backbone, or one line naming the choices
    return {name: "backbone" if i == 0 else f"backbone_{name}" for i, name in enumerate(names)}
