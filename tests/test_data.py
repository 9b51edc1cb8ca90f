"""The data stage: CSV validation, label cleaning, the split, and prepare end to end."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from synthetic import (
    BROKEN_IDS,
    CONFLICT_ID,
    DUPLICATE_ID,
    GENRES,
    MISSING_IDS,
    MODE_IDS,
    NA_IDS,
    header,
    make_dataset,
)

from poster_ray import data
from poster_ray.config import SPLITS, PreprocessSpec
from poster_ray.errors import PosterRayError
from poster_ray.layout import RunDir

REAL_DATA = Path(__file__).resolve().parents[2] / "shared/datasets/movie-posters"
REAL_GENRES = [
    "Action", "Adventure", "Animation", "Biography", "Comedy", "Crime", "Documentary",
    "Drama", "Family", "Fantasy", "History", "Horror", "Music", "Musical", "Mystery",
    "News", "Reality-TV", "Romance", "Sci-Fi", "Short", "Sport", "Thriller", "War", "Western",
]  # fmt: skip
SPEC = PreprocessSpec(image_size=24)


def load_csv(path: Path) -> pd.DataFrame:
    """read_label_csv plus the one-hot check, as prepare runs them."""
    frame = data.read_label_csv(path)
    genres = data.genres_from_header(list(frame.columns))
    data.check_one_hot(frame, [*genres, "N/A"], path)
    return frame


# ---------------------------------------------------------------- CSV errors


def write_csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.csv"
    path.write_text(text)
    return path


HEAD = ",".join(header(["Action", "Comedy", "Drama"])) + "\n"  # Id,Genre,Action,..,N/A


def test_missing_id_column(tmp_path):
    path = write_csv(tmp_path, "Movie,Genre,Action\ntt1,['Action'],1\n")
    with pytest.raises(PosterRayError, match="no 'Id' column") as caught:
        load_csv(path)
    assert str(path) in str(caught.value)
    assert "line 1" in str(caught.value)


def test_bad_genre_value_names_line_id_and_column(tmp_path):
    path = write_csv(
        tmp_path,
        HEAD + "tt1,\"['Action']\",1,0,0,0\ntt2,\"['Drama']\",0,0,2,0\ntt3,[],1,0,0,0\n",
    )
    with pytest.raises(PosterRayError) as caught:
        load_csv(path)
    message = str(caught.value)
    assert str(path) in message
    assert "line 3" in message
    assert "'tt2'" in message
    assert "column 'Drama'" in message
    assert "'2'" in message


def test_empty_file(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"")
    with pytest.raises(PosterRayError, match="empty") as caught:
        data.read_label_csv(path)
    assert str(path) in str(caught.value)


def test_jpeg_bytes_saved_as_csv(tmp_path):
    path = tmp_path / "train.csv"
    Image.new("RGB", (20, 20), (10, 200, 30)).save(path, "JPEG")
    with pytest.raises(PosterRayError, match="not a CSV text file") as caught:
        data.read_label_csv(path)
    assert str(path) in str(caught.value)


def test_missing_csv_file(tmp_path):
    with pytest.raises(PosterRayError, match="file not found"):
        data.read_label_csv(tmp_path / "train.csv")


def test_row_with_too_many_fields(tmp_path):
    path = write_csv(tmp_path, HEAD + "tt1,[],1,0,0,0\ntt2,[],1,0,0,0,1\n")
    with pytest.raises(PosterRayError, match="not a valid CSV") as caught:
        data.read_label_csv(path)
    assert str(path) in str(caught.value)
    assert "line 3" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_row_with_too_few_fields(tmp_path):
    path = write_csv(tmp_path, HEAD + "tt1,[],1,0,0,0\ntt2,[],1,0\n")
    with pytest.raises(PosterRayError) as caught:
        load_csv(path)
    message = str(caught.value)
    assert str(path) in message
    assert "line 3" in message
    assert "'tt2'" in message
    assert "column 'Drama'" in message


def test_header_without_genres(tmp_path):
    path = write_csv(tmp_path, "Id,Genre\ntt1,[]\n")
    frame = data.read_label_csv(path)
    with pytest.raises(PosterRayError, match="no genre columns"):
        data.check_one_hot(frame, data.genres_from_header(list(frame.columns)), path)


# ---------------------------------------------------------------- clean_labels


def test_genre_vocabulary_of_the_real_header_excludes_id_genre_and_na():
    columns = header(REAL_GENRES)
    assert columns.index("N/A") == columns.index("Mystery") + 1  # as in the published CSV
    assert data.genres_from_header(columns) == REAL_GENRES
    assert len(data.genres_from_header(columns)) == 24


def test_clean_labels_drops_na_duplicates_and_keeps_the_first_conflicting_row(tmp_path):
    root = make_dataset(tmp_path, n=20, duplicates=True, na_rows=True)
    frame = load_csv(root / "train.csv")
    genres = data.genres_from_header(list(frame.columns))
    assert genres == GENRES

    kept, dropped = data.clean_labels(frame, genres)

    assert list(kept.columns) == ["Id", *GENRES]
    assert kept["Id"].is_unique
    assert len(kept) == 20
    assert not kept["Id"].isin(NA_IDS).any()
    reasons = dict(zip(dropped["id"], dropped["reason"], strict=True))
    assert reasons == {
        NA_IDS[0]: "flagged N/A",
        NA_IDS[1]: "flagged N/A",
        DUPLICATE_ID: "duplicate id",
        CONFLICT_ID: "duplicate id with other labels (first row kept)",
    }
    # The kept conflicting row is the first one in the file; lines count from the header.
    first = frame[frame["Id"] == CONFLICT_ID].iloc[0][GENRES].astype(int).tolist()
    assert kept.loc[kept["Id"] == CONFLICT_ID, GENRES].iloc[0].tolist() == first
    assert dropped.loc[dropped["id"] == CONFLICT_ID, "line"].item() == len(frame) + 1


def test_clean_labels_drops_unsafe_ids_and_rows_without_genre(tmp_path):
    path = write_csv(
        tmp_path,
        HEAD + "../etc/x,[],1,0,0,0\n,[],1,0,0,0\n tt3 ,[],0,1,0,0\ntt4,[],0,0,0,0\n",
    )
    frame = load_csv(path)
    kept, dropped = data.clean_labels(frame, data.genres_from_header(list(frame.columns)))
    assert kept["Id"].tolist() == ["tt3"]  # surrounding spaces stripped
    assert dropped["reason"].tolist() == ["invalid Id", "invalid Id", "no genre"]
    assert dropped["line"].tolist() == [2, 3, 5]


# ---------------------------------------------------------------- split_rows


def label_matrix(n: int, seed: int, rare_counts=(3, 4, 5, 1)) -> np.ndarray:
    """Common genres at several densities plus genres with exactly `rare_counts` ones."""
    rng = np.random.default_rng(seed)
    common = (rng.random((n, 5)) < [0.4, 0.3, 0.25, 0.15, 0.08]).astype(np.uint8)
    rare = np.zeros((n, len(rare_counts)), dtype=np.uint8)
    for column, count in enumerate(rare_counts):
        rare[rng.choice(n, size=count, replace=False), column] = 1
    labels = np.concatenate([common, rare], axis=1)
    labels[labels.sum(axis=1) == 0, 0] = 1
    return labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_proportions(seed):
    assignment = data.split_rows(label_matrix(400, seed), seed)
    assert set(assignment) == set(SPLITS)
    for split, fraction in {"train": 0.70, "val": 0.15, "test": 0.15}.items():
        assert abs((assignment == split).mean() - fraction) <= 0.03, split


@pytest.mark.parametrize("n", [30, 60, 400])
@pytest.mark.parametrize("seed", range(5))
def test_genres_with_three_or_more_posters_are_in_every_split(n, seed):
    labels = label_matrix(n, seed)
    assignment = data.split_rows(labels, seed)
    for genre in np.flatnonzero(labels.sum(axis=0) >= 3):
        for split in SPLITS:
            assert labels[assignment == split, genre].sum() > 0, (genre, split)


def test_split_is_deterministic_for_a_seed():
    labels = label_matrix(200, 0)
    first = data.split_rows(labels, 7)
    np.testing.assert_array_equal(first, data.split_rows(labels, 7))
    assert (first != data.split_rows(labels, 8)).any()


def test_one_poster_genre_and_empty_genre_do_not_break_the_split():
    labels = label_matrix(40, 3, rare_counts=(1, 0))
    assignment = data.split_rows(labels, 0)
    assert len(assignment) == 40
    assert set(assignment) == set(SPLITS)


def test_fewer_than_ten_rows_is_a_user_error():
    with pytest.raises(PosterRayError, match="only 9 usable posters"):
        data.split_rows(label_matrix(9, 0, rare_counts=()), 0)


# ---------------------------------------------------------------- prepare end to end

DIRTY = dict(duplicates=True, na_rows=True, missing_images=True, broken_files=True, modes=True)
N_GOOD = 50


@pytest.fixture(scope="module")
def prepared(ray_session, tmp_path_factory):
    """One prepare run on a dirty synthetic dataset, shared by the tests below."""
    root = make_dataset(tmp_path_factory.mktemp("dirty"), n=N_GOOD, **DIRTY)
    run = RunDir(tmp_path_factory.mktemp("run"))
    summary = data.prepare(root, run, SPEC, seed=3)
    return root, run, summary


def test_prepare_manifest_holds_only_good_posters(prepared):
    _, run, summary = prepared
    manifest = pd.read_parquet(run.manifest)
    good_ids = {f"tt{number:07d}" for number in range(1, N_GOOD + 1)} | set(MODE_IDS.values())
    assert set(manifest["id"]) == good_ids
    assert manifest["id"].is_unique
    assert set(manifest["split"]) == set(SPLITS)
    assert summary["kept"] == len(manifest) == N_GOOD + len(MODE_IDS)
    assert summary["ids_in_two_splits"] == 0


def test_prepare_lists_every_dropped_row_with_its_reason(prepared):
    _, run, summary = prepared
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
    assert summary["csv_rows"] == N_GOOD + len(MODE_IDS) + 2 + 2 + 3 + 2


def test_prepare_summary_counts_match_the_manifest(prepared):
    _, run, summary = prepared
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


def test_prepare_writes_genres_and_preprocess_spec(prepared):
    _, run, _ = prepared
    assert run.load_genres() == GENRES
    assert PreprocessSpec.load(run.preprocess) == SPEC
    for split in SPLITS:
        assert run.cache_split(split, SPEC.image_size).is_dir()


def test_read_split_arrays_agrees_with_the_manifest(prepared):
    root, run, _ = prepared
    manifest = pd.read_parquet(run.manifest).set_index("id")
    for split in SPLITS:
        ids, images, labels = data.read_split_arrays(run, split)
        expected = manifest[manifest["split"] == split]
        assert sorted(ids) == sorted(expected.index)
        assert images.shape == (len(ids), 24, 24, 3)
        assert images.dtype == np.uint8
        np.testing.assert_array_equal(labels, np.stack(expected.loc[ids, "labels"].to_numpy()))
    # The cached pixels are the decoded poster.
    from poster_ray.images import read_and_decode

    ids, images, _ = data.read_split_arrays(run, "train")
    pixels, error = read_and_decode(str(root / "Images" / f"{ids[0]}.jpg"), SPEC)
    assert error == ""
    np.testing.assert_array_equal(images[0], pixels)


def test_load_split_streams_uint8_images_and_manifest_labels(prepared):
    _, run, _ = prepared
    manifest = pd.read_parquet(run.manifest)
    train = manifest[manifest["split"] == "train"]
    rows = data.load_split(run, "train").take_all()
    assert len(rows) == len(train)
    assert all(row["image"].shape == (24, 24, 3) and row["image"].dtype == np.uint8 for row in rows)
    got = sorted(tuple(row["labels"].tolist()) for row in rows)
    assert got == sorted(tuple(labels.tolist()) for labels in train["labels"])


def test_load_split_without_cache_says_run_prepare(tmp_path):
    with pytest.raises(PosterRayError, match="poster-ray prepare"):
        data.load_split(RunDir(tmp_path), "train")


def test_prepare_limit_uses_a_sample(prepared, tmp_path):
    root, _, _ = prepared
    run = RunDir(tmp_path / "limited")
    summary = data.prepare(root, run, SPEC, seed=3, limit=20)
    manifest = pd.read_parquet(run.manifest)
    dropped = pd.read_csv(run.dropped, keep_default_na=False)
    unreadable = dropped["reason"].str.startswith("unreadable").sum()
    assert len(manifest) + unreadable == 20  # the sample, minus any bad files it drew
    assert summary["kept"] == len(manifest)
    assert sum(summary["splits"][split]["posters"] for split in SPLITS) == len(manifest)


# ---------------------------------------------------------------- resolve_data_dir


def test_explicit_data_dir_without_train_csv(tmp_path):
    with pytest.raises(PosterRayError, match="no train.csv") as caught:
        data.resolve_data_dir(str(tmp_path), {})
    assert str(tmp_path) in str(caught.value)


def test_env_var_is_used_without_data(synthetic_dataset):
    resolved = data.resolve_data_dir(None, {"POSTER_DATA": str(synthetic_dataset)})
    assert resolved.local_path == synthetic_dataset


def test_data_argument_wins_over_env_var(synthetic_dataset, tmp_path):
    with pytest.raises(PosterRayError, match="no train.csv"):
        data.resolve_data_dir(str(tmp_path / "nowhere"), {"POSTER_DATA": str(synthetic_dataset)})


def test_default_dir_is_used_when_present(synthetic_dataset, monkeypatch):
    monkeypatch.setattr(data, "DEFAULT_DATA_DIR", synthetic_dataset)
    monkeypatch.setattr(data, "clone_dataset", lambda target: pytest.fail("cloned anyway"))
    assert data.resolve_data_dir(None, {}).local_path == synthetic_dataset


def test_failed_clone_is_one_line_naming_data_and_env_var(tmp_path, monkeypatch):
    target = tmp_path / "data" / "Movies-Poster_Dataset"
    monkeypatch.setattr(data, "DEFAULT_DATA_DIR", target)
    monkeypatch.setattr(data, "DATASET_URL", str(tmp_path / "no-such-repo"))  # git fails offline
    with pytest.raises(PosterRayError) as caught:
        data.resolve_data_dir(None, {})
    message = str(caught.value)
    assert "\n" not in message
    assert "--data" in message and "POSTER_DATA" in message
    assert not target.exists()  # no half-cloned folder left behind


def test_missing_git_is_one_line_error(tmp_path, monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(data, "DEFAULT_DATA_DIR", tmp_path / "default")
    monkeypatch.setattr(subprocess, "run", no_git)
    with pytest.raises(PosterRayError, match="FileNotFoundError.*--data DIR.*POSTER_DATA"):
        data.resolve_data_dir(None, {})


def test_failed_clone_keeps_a_users_existing_folder(tmp_path, monkeypatch):
    target = tmp_path / "default"
    (target / "Images").mkdir(parents=True)
    (target / "Images" / "tt1.jpg").write_bytes(b"mine")
    monkeypatch.setattr(data, "DEFAULT_DATA_DIR", target)
    monkeypatch.setattr(data, "DATASET_URL", str(tmp_path / "no-such-repo"))
    with pytest.raises(PosterRayError, match="could not clone"):
        data.resolve_data_dir(None, {})
    assert (target / "Images" / "tt1.jpg").read_bytes() == b"mine"


# ---------------------------------------------------------------- the real CSV


@pytest.mark.skipif(not (REAL_DATA / "train.csv").is_file(), reason="no local copy of the dataset")
def test_real_csv_has_24_genres_and_splits_70_15_15():
    frame = load_csv(REAL_DATA / "train.csv")
    genres = data.genres_from_header(list(frame.columns))
    assert genres == REAL_GENRES
    kept, dropped = data.clean_labels(frame, genres)
    unique_ids = frame.loc[frame["N/A"] != "1", "Id"].nunique()
    assert len(kept) == unique_ids
    assert set(dropped["reason"]) <= {"flagged N/A", "duplicate id"}

    assignment = data.split_rows(kept[genres].to_numpy(dtype=np.uint8), 42)
    for split, fraction in {"train": 0.70, "val": 0.15, "test": 0.15}.items():
        assert abs((assignment == split).mean() - fraction) < 0.01, split
    # One row per id, so no poster can be in two splits.
    assert kept["Id"].is_unique
    ids_per_split = pd.DataFrame({"id": kept["Id"], "split": assignment}).groupby("id")["split"]
    assert (ids_per_split.nunique() == 1).all()


def test_zero_image_size_is_refused(tmp_path, synthetic_dataset):
    with pytest.raises(PosterRayError, match="--image-size must be at least 1, got 0"):
        data.prepare(synthetic_dataset, RunDir(tmp_path / "run"), PreprocessSpec(0))
