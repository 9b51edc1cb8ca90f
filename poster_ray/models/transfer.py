"""Transfer models: a pretrained backbone under a small genre head.

The head is its own sub-model ("head"), so it can be trained alone on the backbone's
cached features (seconds per epoch) and then joined to the backbone: the bundle still
holds one model that takes uint8 posters. Fine-tuning starts from that head with the
backbone's top blocks unfrozen and, optionally, augmentation layers in front (active
only in training, so inference is unchanged).
"""

from __future__ import annotations

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
) -> keras.Model:
    """Backbone `name` at `image_size` (default: its native size) to features pooled as
    `pooling` says (models.pooling), its last `trainable_blocks` blocks trainable (0: all
    frozen)."""
    backbone = backbone_of(name)
    feature_map = backbone.build(image_size or backbone.native_size, weights)
    features = pool_features(feature_map.output, pooling)
    model = keras.Model(feature_map.inputs, features, name="backbone")
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
    **head_hparams,
) -> keras.Model:
    """uint8 posters -> [augmentation] -> backbone -> pooling -> head -> one sigmoid per
    genre. `head_hparams` are `build_head`'s (units, dropout).

    The backbone runs in inference mode (its BatchNorm statistics stay ImageNet's) even
    where fine-tuning trains its top blocks: the usual choice with small datasets.
    """
    base = build_backbone(backbone, image_size, weights, trainable_blocks, pooling)
    head = build_head(base.output_shape[-1], num_genres, **head_hparams)
    inputs = keras.Input(shape=base.input_shape[1:])
    x = augmentation()(inputs) if augment else inputs
    outputs = head(base(x, training=False))
    return keras.Model(inputs, outputs, name=f"{backbone}_transfer")
