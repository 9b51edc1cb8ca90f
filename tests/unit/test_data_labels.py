"""train.csv checks (one-line errors naming file, line, id and column), label cleaning,
and the image paths attached to each poster."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from synthetic import (
    CONFLICT_ID,
    DUPLICATE_ID,
    GENRES,
    NA_IDS,
    REAL_GENRES,
    header,
    make_dataset,
)

from poster_ray.data.labels import (
    attach_image_paths,
    check_one_hot,
    clean_labels,
    genres_from_header,
    read_checked_csv,
    read_label_csv,
)
from poster_ray.errors import PosterRayError
from poster_ray.storage import Location


def load_csv(path: Path) -> pd.DataFrame:
    """train.csv read and checked, as prepare reads it."""
    return read_checked_csv(Location.of(path))[0]


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


@pytest.mark.parametrize(
    "rows, shown_value",
    [
        ("tt1,\"['Action']\",1,0,0,0\ntt2,\"['Drama']\",0,0,2,0\ntt3,[],1,0,0,0\n", "'2'"),
        ("tt1,[],1,0,0,0\ntt2,[],1,0\n", "''"),  # too few fields: Drama and N/A are empty
    ],
    ids=["value 2", "too few fields"],
)
def test_bad_genre_cell_names_line_id_column_and_value(tmp_path, rows, shown_value):
    path = write_csv(tmp_path, HEAD + rows)
    with pytest.raises(PosterRayError) as caught:
        load_csv(path)
    message = str(caught.value)
    assert str(path) in message
    assert "line 3" in message
    assert "'tt2'" in message
    assert "column 'Drama'" in message
    assert f"value {shown_value}" in message


def test_empty_file(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"")
    with pytest.raises(PosterRayError, match="empty") as caught:
        read_label_csv(Location.of(path))
    assert str(path) in str(caught.value)


def test_jpeg_bytes_saved_as_csv(tmp_path):
    path = tmp_path / "train.csv"
    Image.new("RGB", (20, 20), (10, 200, 30)).save(path, "JPEG")
    with pytest.raises(PosterRayError, match="not a CSV text file") as caught:
        read_label_csv(Location.of(path))
    assert str(path) in str(caught.value)


def test_missing_csv_file(tmp_path):
    with pytest.raises(PosterRayError, match="file not found"):
        read_label_csv(Location.of(tmp_path / "train.csv"))


def test_row_with_too_many_fields(tmp_path):
    path = write_csv(tmp_path, HEAD + "tt1,[],1,0,0,0\ntt2,[],1,0,0,0,1\n")
    with pytest.raises(PosterRayError, match="not a valid CSV") as caught:
        read_label_csv(Location.of(path))
    assert str(path) in str(caught.value)
    assert "line 3" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_header_without_genres(tmp_path):
    path = write_csv(tmp_path, "Id,Genre\ntt1,[]\n")
    frame = read_label_csv(Location.of(path))
    with pytest.raises(PosterRayError, match="no genre columns"):
        check_one_hot(frame, genres_from_header(list(frame.columns)), path)


# ---------------------------------------------------------------- clean_labels


def test_genre_vocabulary_of_the_real_header_excludes_id_genre_and_na():
    columns = header(REAL_GENRES)
    assert columns.index("N/A") == columns.index("Mystery") + 1  # as in the published CSV
    assert genres_from_header(columns) == REAL_GENRES
    assert len(genres_from_header(columns)) == 24


def test_clean_labels_drops_na_duplicates_and_keeps_the_first_conflicting_row(tmp_path):
    root = make_dataset(tmp_path, n=20, duplicates=True, na_rows=True)
    frame, genres = read_checked_csv(Location.of(root / "train.csv"))
    assert genres == GENRES

    kept, dropped = clean_labels(frame, genres)

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
    frame, genres = read_checked_csv(Location.of(path))
    kept, dropped = clean_labels(frame, genres)
    assert kept["Id"].tolist() == ["tt3"]  # surrounding spaces stripped
    assert dropped["reason"].tolist() == ["invalid Id", "invalid Id", "no genre"]
    assert dropped["line"].tolist() == [2, 3, 5]


# ---------------------------------------------------------------- attach_image_paths


def test_posters_without_an_image_file_are_dropped_as_missing(tmp_path):
    root = make_dataset(tmp_path, n=12, missing_images=True)
    frame, genres = read_checked_csv(Location.of(root / "train.csv"))
    kept, _ = clean_labels(frame, genres)
    with_paths, missing = attach_image_paths(kept, Location.of(root / "Images"))
    assert len(with_paths) == 12
    assert with_paths["path"].map(lambda path: Path(path).is_file()).all()
    assert set(missing["reason"]) == {"image missing"}
    assert len(missing) == len(kept) - 12


def test_missing_images_folder_is_one_line_naming_it(tmp_path):
    root = make_dataset(tmp_path, n=12)
    frame, genres = read_checked_csv(Location.of(root / "train.csv"))
    kept, _ = clean_labels(frame, genres)
    with pytest.raises(PosterRayError) as caught:
        attach_image_paths(kept, Location.of(root / "Posters"))
    message = str(caught.value)
    assert message.startswith(f"{root / 'Posters'}: folder not found")
    assert "\n" not in message
