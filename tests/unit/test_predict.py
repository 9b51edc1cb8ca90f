"""Predict stage: top-k ordering, per-file error rows and thresholds from the bundle."""

import re

import numpy as np
import pytest
import tf_keras as keras
from synthetic import make_poster

from poster_ray import models
from poster_ray.bundle import load_bundle, write_bundle
from poster_ray.config import PreprocessSpec
from poster_ray.images import read_and_decode
from poster_ray.predict import format_predictions, predict_files, top_k

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance"]
SPEC = PreprocessSpec(32)
# Output biases that put every poster near these probabilities (0.27, 0.82, 0.60, 0.31, 0.71),
# so the top three are Comedy, Romance, Drama ...
LOGITS = [-1.0, 1.5, 0.4, -0.8, 0.9]
# ... while Comedy never reaches its threshold and Action always does.
THRESHOLDS = [0.0, 1.01, 0.5, 0.45, 0.55]


def test_top_k_is_descending():
    probabilities = np.array([0.1, 0.9, 0.3, 0.5, 0.2])
    assert top_k(probabilities, GENRES) == [
        ("Comedy", pytest.approx(0.9)),
        ("Horror", pytest.approx(0.5)),
        ("Drama", pytest.approx(0.3)),
    ]


def test_top_k_honours_k():
    # The seed's fixed slice argsort(p)[:-4:-1] always gave three genres, whatever k was.
    probabilities = np.array([0.1, 0.9, 0.3, 0.5, 0.2])
    assert [genre for genre, _ in top_k(probabilities, GENRES, k=1)] == ["Comedy"]
    assert [genre for genre, _ in top_k(probabilities, GENRES, k=5)] == [
        "Comedy",
        "Horror",
        "Drama",
        "Romance",
        "Action",
    ]
    assert len(top_k(probabilities[:2], GENRES[:2], k=3)) == 2


def test_top_k_breaks_ties_in_genre_order():
    assert [genre for genre, _ in top_k(np.array([0.2, 0.7, 0.7, 0.1, 0.7]), GENRES)] == [
        "Comedy",
        "Drama",
        "Romance",
    ]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A bundle of a tiny untrained CNN over five genres, its outputs biased by LOGITS."""
    directory = tmp_path_factory.mktemp("bundle")
    keras.utils.set_random_seed(0)
    model = models.build_custom_cnn(
        len(GENRES), image_size=SPEC.image_size, filters=(4, 4), dense_units=(8,)
    )
    head = model.get_layer("genres")
    head.set_weights([head.get_weights()[0], np.array(LOGITS, dtype=np.float32)])
    model.save(directory / "model.keras")
    write_bundle(directory / "bundle", directory / "model.keras", GENRES, SPEC, THRESHOLDS, {}, {})
    return load_bundle(directory / "bundle")


@pytest.fixture
def files(tmp_path):
    """Three good posters and three bad inputs, interleaved."""
    good = [
        make_poster(tmp_path / f"good{i}.jpg", color=(40 * i, 200 - 50 * i, 90), noise=30, seed=i)
        for i in range(3)
    ]
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good[0].read_bytes()[:300])
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image\n")
    missing = tmp_path / "missing.jpg"
    return [str(p) for p in (good[0], truncated, good[1], missing, text, good[2])]


def test_one_row_per_file_in_input_order(bundle, files):
    rows = predict_files(bundle, files, batch_size=4)
    assert [row["path"] for row in rows] == files
    assert [row["status"] for row in rows] == ["ok", "error", "ok", "error", "error", "ok"]
    for row in rows:
        if row["status"] == "error":
            assert row["error"] and row["top3"] == [] and row["above_threshold"] == []
    assert "FileNotFoundError" in rows[3]["error"]


def test_ok_rows_hold_the_models_top_three(bundle, files):
    rows = predict_files(bundle, files)
    for row in rows:
        if row["status"] != "ok":
            continue
        pixels, _ = read_and_decode(row["path"], SPEC)
        expected = bundle.model.predict(pixels[None], verbose=0)[0]
        genres = [genre for genre, _ in row["top3"]]
        probabilities = [p for _, p in row["top3"]]
        assert len(genres) == 3
        assert probabilities == sorted(probabilities, reverse=True)
        np.testing.assert_allclose(probabilities, expected[[GENRES.index(g) for g in genres]])
        passing = {g for g, p, t in zip(GENRES, expected, THRESHOLDS, strict=True) if p >= t}
        assert set(row["above_threshold"]) == passing
        assert genres == ["Comedy", "Romance", "Drama"]
        assert row["above_threshold"] == ["Romance", "Drama", "Action"]  # by probability


def test_batch_size_does_not_change_the_rows(bundle, files):
    one = predict_files(bundle, files, batch_size=1)
    many = predict_files(bundle, files, batch_size=32)
    assert [row["above_threshold"] for row in one] == [row["above_threshold"] for row in many]
    for a, b in zip(one, many, strict=True):
        assert [g for g, _ in a["top3"]] == [g for g, _ in b["top3"]]
        np.testing.assert_allclose([p for _, p in a["top3"]], [p for _, p in b["top3"]], rtol=1e-5)


def test_no_files_and_only_bad_files(bundle, files):
    assert predict_files(bundle, []) == []
    rows = predict_files(bundle, [files[1], files[3]])
    assert [row["status"] for row in rows] == ["error", "error"]


def test_format_predictions():
    rows = [
        {
            "path": "endgame.jpg",
            "status": "ok",
            "error": "",
            "top3": [["Action", 0.6213], ["Adventure", 0.41], ["Sci-Fi", 0.333]],
            "above_threshold": ["Action", "Adventure"],
        },
        {
            "path": "quiet.jpg",
            "status": "ok",
            "error": "",
            "top3": [["Drama", 0.2], ["Comedy", 0.1], ["Horror", 0.05]],
            "above_threshold": [],
        },
        {
            "path": "gone.jpg",
            "status": "error",
            "error": "FileNotFoundError: no such file",
            "top3": [],
            "above_threshold": [],
        },
    ]
    assert format_predictions(rows).splitlines() == [
        "endgame.jpg: Action 0.62, Adventure 0.41, Sci-Fi 0.33"
        " | above threshold: Action, Adventure",
        "quiet.jpg: Drama 0.20, Comedy 0.10, Horror 0.05 | above threshold: none",
        "gone.jpg: error: FileNotFoundError: no such file",
    ]


def test_format_predictions_of_real_rows(bundle, files):
    lines = format_predictions(predict_files(bundle, files)).splitlines()
    assert len(lines) == len(files)
    assert re.fullmatch(
        r".*/good0\.jpg: Comedy 0\.\d\d, Romance 0\.\d\d, Drama 0\.\d\d"
        r" \| above threshold: Romance, Drama, Action",
        lines[0],
    )
    assert lines[3].startswith(f"{files[3]}: error: FileNotFoundError")
