"""The prepare stage end to end on a dirty dataset: what it keeps, what it drops and why,
the summary, and the files later stages read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic import (
    BROKEN_IDS,
    CONFLICT_ID,
    DIRTY_GOOD_POSTERS,
    DIRTY_IMAGE_SIZE,
    DUPLICATE_ID,
    GENRES,
    MISSING_IDS,
    MODE_IDS,
    NA_IDS,
    make_dataset,
)

from poster_ray.config import SPLITS, PreprocessSpec
from poster_ray.data.prepare import prepare
from poster_ray.errors import PosterRayError
from poster_ray.layout import RunDir

SPEC = PreprocessSpec(DIRTY_IMAGE_SIZE)


def test_prepare_manifest_holds_only_good_posters(dirty_run):
    _, run, summary = dirty_run
    manifest = pd.read_parquet(run.manifest)
    good_ids = {f"tt{number:07d}" for number in range(1, DIRTY_GOOD_POSTERS + 1)}
    assert set(manifest["id"]) == good_ids | set(MODE_IDS.values())
    assert manifest["id"].is_unique
    assert set(manifest["split"]) == set(SPLITS)
    assert summary["kept"] == len(manifest) == DIRTY_GOOD_POSTERS + len(MODE_IDS)
    assert summary["ids_in_two_splits"] == 0


def test_prepare_lists_every_dropped_row_with_its_reason(dirty_run):
    _, run, summary = dirty_run
    dropped = pd.read_csv(run.dropped, keep_default_na=False)
    reasons = dict(zip(dropped["id"], dropped["reason"], strict=True))
    assert len(reasons) == len(dropped)  # one line per dropped row
    for poster_id in NA_IDS:
        assert reasons[poster_id] == "flagged N/A"
    for poster_id in MISSING_IDS:
        assert reasons[poster_id] == "image missing"
    assert reasons[DUPLICATE_ID] == "duplicate id"
    assert reasons[CONFLICT_ID] == "duplicate id with other labels (first row kept)"
    assert reasons[BROKEN_IDS["truncated"]].startswith(
        "unreadable: OSError: image file is truncated"
    )
    assert reasons[BROKEN_IDS["empty"]] == "unreadable: ValueError: empty file"
    assert reasons[BROKEN_IDS["text"]].startswith("unreadable: UnidentifiedImageError")
    assert not set(MODE_IDS.values()) & set(reasons)  # every file mode decoded

    assert summary["dropped"] == {
        "flagged N/A": 2,
        "duplicate id": 1,
        "duplicate id with other labels (first row kept)": 1,
        "image missing": 2,
        "unreadable": 3,
    }
    assert sorted(summary["bad_files"]) == sorted(BROKEN_IDS.values())
    assert summary["csv_rows"] == DIRTY_GOOD_POSTERS + len(MODE_IDS) + 2 + 2 + 3 + 2


def test_prepare_summary_counts_match_the_manifest(dirty_run):
    _, run, summary = dirty_run
    manifest = pd.read_parquet(run.manifest)
    labels = np.stack(manifest["labels"].to_numpy())
    assert summary["genres"] == GENRES
    assert summary["num_genres"] == len(GENRES)
    assert json.loads(run.summary.read_text())["splits"] == summary["splits"]
    for split in SPLITS:
        in_split = (manifest["split"] == split).to_numpy()
        assert summary["splits"][split]["posters"] == in_split.sum()
        expected = dict(zip(GENRES, labels[in_split].sum(axis=0).tolist(), strict=True))
        assert summary["splits"][split]["genre_counts"] == expected
    # The 3- and 4-poster genres (Romance, Horror) reach every split.
    for genre in ("Horror", "Romance"):
        assert all(summary["splits"][split]["genre_counts"][genre] > 0 for split in SPLITS)


def test_prepare_writes_genres_and_preprocess_spec(dirty_run):
    _, run, _ = dirty_run
    assert run.load_genres() == GENRES
    assert PreprocessSpec.load(run.preprocess) == SPEC
    for split in SPLITS:
        assert run.cache_split(split, SPEC.image_size).is_dir()


def test_prepare_limit_uses_a_sample(dirty_run, tmp_path):
    root, _, _ = dirty_run
    run = RunDir(tmp_path / "limited")
    summary = prepare(root, run, SPEC, seed=3, limit=20)
    manifest = pd.read_parquet(run.manifest)
    dropped = pd.read_csv(run.dropped, keep_default_na=False)
    unreadable = dropped["reason"].str.startswith("unreadable").sum()
    assert len(manifest) + unreadable == 20  # the sample, minus any bad files it drew
    assert summary["kept"] == len(manifest)
    assert sum(summary["splits"][split]["posters"] for split in SPLITS) == len(manifest)


def test_a_run_prepared_from_the_same_inputs_is_reused_and_other_settings_redo_it(
    ray_session, synthetic_dataset, tmp_path, capsys
):
    run = RunDir(tmp_path / "run")
    summary = prepare(synthetic_dataset, run, SPEC, seed=0)
    manifest_written = Path(run.manifest.path).stat().st_mtime_ns
    trained = Path(run.model("cnn").model.path)
    trained.parent.mkdir(parents=True)
    trained.write_bytes(b"a model of this split")
    assert prepare(synthetic_dataset, run, SPEC, seed=0) == summary
    assert "prepared before from the same posters and settings" in capsys.readouterr().out
    assert Path(run.manifest.path).stat().st_mtime_ns == manifest_written  # not written again
    assert trained.is_file()
    resplit = prepare(synthetic_dataset, run, SPEC, seed=1)  # another split: prepared anew
    assert "models and predictions are redone" in capsys.readouterr().out
    assert resplit["fingerprint"] != summary["fingerprint"]
    assert not trained.exists()  # a model of the old split is never reused


def test_zero_image_size_is_refused(tmp_path, synthetic_dataset):
    with pytest.raises(PosterRayError, match="--image-size must be at least 1, got 0"):
        prepare(synthetic_dataset, RunDir(tmp_path / "run"), PreprocessSpec(0), seed=0)


def test_dataset_without_its_images_folder_is_one_line_naming_it(tmp_path):
    root = make_dataset(tmp_path / "dataset", n=12)
    for poster in (root / "Images").iterdir():
        poster.unlink()
    (root / "Images").rmdir()
    run = RunDir(tmp_path / "run")
    with pytest.raises(PosterRayError) as caught:
        prepare(root, run, SPEC, seed=0)
    message = str(caught.value)
    assert message.startswith(f"{root / 'Images'}: folder not found")
    assert "\n" not in message
    assert "usable posters" not in message
    assert not run.root.exists()  # refused before anything is written
