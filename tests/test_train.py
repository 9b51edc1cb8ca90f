"""Ray Train: a tiny 2-worker run on synthetic posters, its outputs, and resuming it."""

from __future__ import annotations

import json
import zipfile
from dataclasses import replace

import numpy as np
import pytest
from synthetic import prepared_run

from poster_ray import data, train
from poster_ray.bundle import load_bundle
from poster_ray.config import PreprocessSpec, RunDir, TrainConfig
from poster_ray.errors import PosterRayError
from poster_ray.evaluate import evaluate_model_dir

TINY = TrainConfig(
    epochs=2,
    batch_size=8,
    workers=2,
    early_stopping=0,
    hparams={"filters": [4, 8], "kernel_size": 3, "dense_units": [16]},
)


@pytest.fixture(scope="module")
def run(tmp_path_factory, ray_session) -> RunDir:
    return prepared_run(tmp_path_factory.mktemp("train"), n=80, image_size=32)


@pytest.fixture(scope="module")
def trained(run: RunDir):
    return train.train(run, "tiny", TINY)


def test_two_workers_leave_model_history_curves_and_checkpoints(run, trained):
    history = json.loads((trained / "history.json").read_text())
    assert [epoch["epoch"] for epoch in history] == [1, 2]
    for key in ("loss", "val_loss", "val_auc", "val_pr_auc", "val_micro_f1", "train_images_per_s"):
        assert np.isfinite(history[-1][key]), key
    assert train.PLACEMENT_GROUP_KEY not in history[-1]  # reported to Ray, not history
    for curve in ("curve_loss.png", "curve_precision.png"):
        assert (trained / curve).stat().st_size > 1000
    config = json.loads((trained / "train_config.json").read_text())
    assert config["workers"] == 2 and config["model"] == "custom_cnn"
    checkpoints = list((run.root / "ray" / "tiny").glob("checkpoint_*/model.keras"))
    assert checkpoints
    # Keras v3 zips, loadable in safe mode: not HDF5 under a .keras name.
    assert all(zipfile.is_zipfile(path) for path in [*checkpoints, trained / "model.keras"])


def test_evaluation_writes_a_loadable_bundle(run, trained):
    result = evaluate_model_dir(trained, run)
    bundle = load_bundle(trained / "bundle")
    assert bundle.genres == run.load_genres()
    assert bundle.spec == PreprocessSpec(32)
    assert 0.0 <= result["micro_f1@calibrated"] <= 1.0


def test_rerun_with_the_same_name_resumes_from_the_last_checkpoint(run, trained):
    before = json.loads((trained / "history.json").read_text())
    resumed = train.train(run, "tiny", replace(TINY, epochs=3))
    after = json.loads((resumed / "history.json").read_text())
    assert [epoch["epoch"] for epoch in after] == [1, 2, 3]
    # Epochs 1-2 come from the checkpoint, not from training again.
    assert after[:2] == before


def test_shards_are_disjoint_stable_and_cover_the_split():
    ids = np.array([f"tt{i:07d}" for i in range(500)])
    shards = data.shard_of(ids, 2)
    assert set(shards) == {0, 1}
    np.testing.assert_array_equal(shards, data.shard_of(ids, 2))
    assert 200 < (shards == 0).sum() < 300


def test_step_counts_fit_the_smallest_shard(run):
    training_data = train.load_training_data(run, workers=2)
    assert sorted(training_data.datasets) == ["train_0", "train_1", "val"]
    steps = train.step_counts(training_data, replace(TINY, batch_size=4))
    smallest = min(data.shard_sizes(run, "train", 2))
    assert training_data.datasets["train_0"].count() + training_data.datasets[
        "train_1"
    ].count() == sum(data.shard_sizes(run, "train", 2))
    assert steps["train"] == smallest // 2
    assert steps["val"] == data.shard_sizes(run, "val", 1)[0] // 2


def test_a_model_too_deep_for_the_image_size_fails_in_the_driver(run):
    config = replace(TINY, hparams={})  # the seed's 4 blocks of 5x5 need ~94 px
    with pytest.raises(PosterRayError, match="cannot build custom_cnn for 32x32"):
        train.train(run, "too-deep", config)


def test_vgg16_trains_from_scratch_with_weights_none(run):
    config = TrainConfig(
        model="vgg16",
        epochs=1,
        batch_size=8,
        workers=1,
        early_stopping=0,
        weights="none",
        hparams={"dense_units": 16, "trainable_blocks": 1},
    )
    out = train.train(run, "vgg-tiny", config)
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1 and np.isfinite(history[0]["val_loss"])
    assert json.loads((out / "train_config.json").read_text())["model"] == "vgg16"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"workers": 0}, "--workers must be at least 1"),
        ({"epochs": 0}, "--epochs must be at least 1"),
        ({"batch_size": 1}, "--batch-size 1 is smaller than --workers 2"),
    ],
)
def test_bad_counts_fail_before_ray_starts_anything(run, change, message):
    with pytest.raises(PosterRayError, match=message):
        train.train(run, "bad", replace(TINY, **change))
