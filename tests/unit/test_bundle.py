"""Model bundles: round trip, atomic replacement, and every way a bundle can be wrong."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tf_keras as keras

from poster_ray import models
from poster_ray.bundle import (
    HASHED_FILES,
    INFO_FILE,
    THRESHOLDS_FILE,
    bundle_info,
    content_hash,
    load_bundle,
    verified_info,
    write_bundle,
)
from poster_ray.config import PreprocessSpec
from poster_ray.errors import PosterRayError, RunFailure

SIZE = 32
SPEC = PreprocessSpec(SIZE)
GENRES = ["Action", "Comedy", "Drama"]
THRESHOLDS = [0.3, 0.5, 0.25]
CONFIG = {"model": "custom_cnn", "epochs": 2, "hparams": {"filters": [4, 4]}}
METRICS = {"micro_f1@calibrated": 0.5}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A tiny saved CNN with three outputs."""
    model = models.build_custom_cnn(
        num_genres=len(GENRES), image_size=SIZE, filters=(4, 4), dense_units=(8,)
    )
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return path


def write(out_dir, model_file, genres=GENRES, thresholds=THRESHOLDS):
    return write_bundle(out_dir, model_file, genres, SPEC, thresholds, CONFIG, METRICS).local_path


def pixels(batch):
    return np.random.default_rng(0).integers(0, 256, (batch, SIZE, SIZE, 3), dtype=np.uint8)


def test_round_trip_gives_the_same_model_and_metadata(model_file, tmp_path):
    path = write(tmp_path / "bundle", model_file)
    bundle = load_bundle(path)

    original = models.load_model(model_file)
    np.testing.assert_array_equal(
        bundle.model.predict(pixels(4), verbose=0), original.predict(pixels(4), verbose=0)
    )
    assert bundle.genres == GENRES
    assert bundle.spec == SPEC
    np.testing.assert_array_equal(bundle.thresholds, THRESHOLDS)
    assert bundle.path.local_path == path
    assert bundle.info["model"] == "custom_cnn"
    assert bundle.info["train_config"] == CONFIG
    assert bundle.info["metrics"] == METRICS
    assert bundle.info["content_hash"] == content_hash(path)
    assert sorted(bundle.info["files"]) == sorted(p.name for p in path.iterdir())
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no staging dirs left


def test_writing_again_replaces_the_old_bundle(model_file, tmp_path):
    write(tmp_path / "bundle", model_file)
    write(tmp_path / "bundle", model_file, thresholds=[0.1, 0.2, 0.3])
    np.testing.assert_array_equal(load_bundle(tmp_path / "bundle").thresholds, [0.1, 0.2, 0.3])
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_a_failed_write_leaves_the_old_bundle_untouched(model_file, tmp_path):
    write(tmp_path / "bundle", model_file)
    with pytest.raises(FileNotFoundError):
        write(tmp_path / "bundle", tmp_path / "no-such-model.keras")
    np.testing.assert_array_equal(load_bundle(tmp_path / "bundle").thresholds, THRESHOLDS)
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_thresholds_must_match_the_genres_when_writing(model_file, tmp_path):
    with pytest.raises(PosterRayError, match="2 thresholds for 3 genres"):
        write(tmp_path / "bundle", model_file, thresholds=[0.5, 0.5])
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("name", [*HASHED_FILES, INFO_FILE])
def test_a_missing_file_is_named(model_file, tmp_path, name):
    path = write(tmp_path / "bundle", model_file)
    (path / name).unlink()
    with pytest.raises(PosterRayError, match=f"{name} is missing"):
        load_bundle(path)


def test_edited_thresholds_are_detected(model_file, tmp_path):
    path = write(tmp_path / "bundle", model_file)
    (path / THRESHOLDS_FILE).write_text(json.dumps([0.0, 0.0, 0.0]))
    with pytest.raises(PosterRayError, match="modified"):
        load_bundle(path)


def test_threshold_count_is_checked_when_loading(model_file, tmp_path):
    path = write(tmp_path / "bundle", model_file)
    (path / THRESHOLDS_FILE).write_text(json.dumps([0.5, 0.5]))
    rehash(path)  # as if the bundle had been written this way
    with pytest.raises(PosterRayError, match="2 thresholds but genres.json lists 3"):
        load_bundle(path)


def test_a_model_for_another_genre_list_is_refused(model_file, tmp_path):
    path = write(tmp_path / "bundle", model_file, [*GENRES, "Horror"], [0.5] * 4)
    with pytest.raises(PosterRayError, match="outputs 3 genres but the genre list has 4"):
        load_bundle(path)


def test_a_model_for_another_image_size_is_refused(model_file, tmp_path):
    path = write_bundle(
        tmp_path / "bundle", model_file, GENRES, PreprocessSpec(40), THRESHOLDS, CONFIG, METRICS
    )
    with pytest.raises(PosterRayError, match=r"takes \(32, 32, 3\) inputs"):
        load_bundle(path)


def lambda_bundle(tmp_path) -> Path:
    """A bundle whose model carries Python code: a Lambda layer."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Lambda(lambda t: t / 255.0)(inputs)
    outputs = keras.layers.Dense(len(GENRES))(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inputs, outputs).save(tmp_path / "lambda.keras")
    return write(tmp_path / "bundle", tmp_path / "lambda.keras")


def test_a_model_with_python_code_is_refused(tmp_path):
    path = lambda_bundle(tmp_path)
    with pytest.raises(PosterRayError, match="refusing to load.*Lambda"):
        load_bundle(path)


def test_not_a_directory(tmp_path):
    with pytest.raises(PosterRayError, match="no model bundle there"):
        load_bundle(tmp_path / "nothing")


def test_bundle_info_does_not_import_tensorflow(model_file, tmp_path):
    path = write(tmp_path / "bundle", model_file)
    script = (
        "import sys; from poster_ray.bundle import bundle_info; "
        f"assert bundle_info({str(path)!r})['model'] == 'custom_cnn'; "
        "assert 'tensorflow' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def rehash(path) -> None:
    """Record the bundle's present content hash, as a careful forger would."""
    info = bundle_info(path)
    info["content_hash"] = content_hash(path)
    (path / INFO_FILE).write_text(json.dumps(info))


def test_an_edited_description_is_detected(model_file, tmp_path):
    path = write(tmp_path / "bundle", model_file)
    info = bundle_info(path)
    (path / INFO_FILE).write_text(json.dumps({**info, "num_genres": 4}))
    with pytest.raises(RunFailure, match="modified after it was written"):
        verified_info(path)


def test_an_edited_description_with_a_recomputed_hash_is_checked_field_by_field(
    model_file, tmp_path
):
    path = write(tmp_path / "bundle", model_file)
    (path / INFO_FILE).write_text(json.dumps({**bundle_info(path), "num_genres": 4}))
    rehash(path)
    with pytest.raises(RunFailure, match="num_genres is 4, the bundle's files say 3"):
        verified_info(path)


def test_a_corrupt_model_archive_is_one_line_naming_the_file(model_file, tmp_path):
    path = write(tmp_path / "bundle", model_file)
    (path / "model.keras").write_bytes(b"PK\x03\x04" + b"\0" * 200)  # a zip in name only
    rehash(path)
    with pytest.raises(RunFailure, match=r"model.keras: damaged, not a Keras model archive"):
        load_bundle(path)


def test_a_bundle_of_the_old_format_asks_to_export_again(model_file, tmp_path):
    path = write(tmp_path / "bundle", model_file)
    (path / INFO_FILE).write_text(json.dumps({**bundle_info(path), "format_version": 1}))
    with pytest.raises(RunFailure, match="format 1.*rerun the `poster-ray train`"):
        verified_info(path)


def test_python_code_is_refused_without_tensorflow(tmp_path):
    """verified_info (what `infer` runs on its driver) reads the archive's config only."""
    path = lambda_bundle(tmp_path)
    script = (
        "import sys\nfrom poster_ray.bundle import verified_info\n"
        f"try:\n    verified_info({str(path)!r})\nexcept Exception as error:\n    print(error)\n"
        "print('tensorflow' in sys.modules)\n"
    )
    printed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert "refusing to load this model: a Lambda layer" in printed[0]
    assert printed[1] == "False"


def test_a_number_of_test_views_past_the_views_is_refused(model_file, tmp_path):
    path = write_bundle(
        tmp_path / "bundle", model_file, GENRES, SPEC, THRESHOLDS, {**CONFIG, "test_views": 99}, {}
    ).local_path
    with pytest.raises(RunFailure, match="test_views is 99, not one of"):
        verified_info(path)
    assert load_bundle(write(tmp_path / "plain", model_file)).test_views == 1
