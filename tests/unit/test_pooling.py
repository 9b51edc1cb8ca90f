"""Poolings of a backbone's feature map: what each computes, and GeM's safe-mode round trip."""

import re

import numpy as np
import pytest
import tf_keras as keras

from poster_ray.config import POOLINGS
from poster_ray.errors import PosterRayError
from poster_ray.models.pooling import GEM_POWER, pool_features

# Two posters' 3x4 maps of 5 channels, non-negative as after ReLU6.
MAPS = np.random.default_rng(0).uniform(0, 6, (2, 3, 4, 5)).astype("float32")


def pooled(pooling: str) -> keras.Model:
    inputs = keras.Input(shape=MAPS.shape[1:])
    return keras.Model(inputs, pool_features(inputs, pooling))


@pytest.mark.parametrize(
    ("pooling", "expected"),
    [
        ("avg", MAPS.mean(axis=(1, 2))),
        ("max", MAPS.max(axis=(1, 2))),
        ("gem", (MAPS**GEM_POWER).mean(axis=(1, 2)) ** (1 / GEM_POWER)),
        ("avg+max", np.concatenate([MAPS.mean(axis=(1, 2)), MAPS.max(axis=(1, 2))], axis=1)),
    ],
)
def test_each_pooling_computes_its_formula(pooling, expected):
    np.testing.assert_allclose(pooled(pooling).predict(MAPS, verbose=0), expected, rtol=1e-5)


def test_gem_lies_between_average_and_maximum():
    gem = pooled("gem").predict(MAPS, verbose=0)
    assert (MAPS.mean(axis=(1, 2)) < gem).all() and (gem < MAPS.max(axis=(1, 2))).all()


def test_a_gem_model_loads_in_safe_mode_with_its_power(tmp_path):
    from poster_ray.models import load_model

    model = pooled("gem")
    model.save(tmp_path / "gem.keras")
    loaded = load_model(tmp_path / "gem.keras")
    np.testing.assert_allclose(loaded.predict(MAPS, verbose=0), model.predict(MAPS, verbose=0))
    assert loaded.get_layer("gem_pool").power == GEM_POWER


def test_an_unknown_pooling_names_the_choices():
    with pytest.raises(PosterRayError, match=re.escape(f"choose one of {list(POOLINGS)}")):
        pool_features(keras.Input(shape=MAPS.shape[1:]), "median")


def test_each_pooling_has_its_own_cache_and_average_keeps_the_earlier_folder(tmp_path):
    from poster_ray.layout import RunDir

    run = RunDir(tmp_path)
    folders = {pooling: run.features("efficientnet_lite0", 64, pooling) for pooling in POOLINGS}
    assert folders["avg"].uri.endswith("/features/efficientnet_lite0-64px")
    assert len(set(folders.values())) == len(POOLINGS)


def test_a_cache_marked_before_pooling_was_a_choice_counts_as_average(tmp_path):
    from poster_ray.features import FEATURES_MARKER, finished_cache
    from poster_ray.storage import Location

    location = Location.of(str(tmp_path))
    made = {"backbone": "efficientnet_lite0", "image_size": 64, "weights": "imagenet"}
    (location / FEATURES_MARKER).write_json({**made, "dims": 8})  # no "pooling"
    assert finished_cache(location, {**made, "pooling": "avg"}).dims == 8
    assert finished_cache(location, {**made, "pooling": "gem"}) is None
    assert finished_cache(location / "absent", {**made, "pooling": "avg"}) is None
