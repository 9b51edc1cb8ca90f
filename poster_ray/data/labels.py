"""train.csv -> checked, cleaned labels, one row per poster with its image path.

Every error names the file, and the line, id and column where there is one, in a
single line: the user fixes the CSV without reading a traceback.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from poster_ray.config import ID_COLUMN, NA_COLUMN, NON_GENRE_COLUMNS
from poster_ray.errors import PosterRayError
from poster_ray.storage import Location

# Ids name files: anything beyond these characters could escape the Images folder.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def read_checked_csv(csv_path: Location) -> tuple[pd.DataFrame, list[str]]:
    """train.csv as strings and its genre vocabulary, every one-hot cell checked."""
    frame = read_label_csv(csv_path)
    genres = genres_from_header(list(frame.columns))
    check_one_hot(frame, [*genres, NA_COLUMN] if NA_COLUMN in frame.columns else genres, csv_path)
    return frame, genres


def read_label_csv(csv_path: Location) -> pd.DataFrame:
    """Read train.csv as strings, so that every value can be checked before use."""
    if not csv_path.is_file():
        raise PosterRayError(f"{csv_path}: file not found")
    try:
        frame = pd.read_csv(io.BytesIO(csv_path.read_bytes()), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise PosterRayError(f"{csv_path}: file is empty") from None
    except UnicodeDecodeError:
        raise PosterRayError(f"{csv_path}: not a CSV text file (it is not UTF-8 text)") from None
    except pd.errors.ParserError as error:
        detail = str(error).strip().splitlines()[-1]
        raise PosterRayError(f"{csv_path}: not a valid CSV file: {detail}") from None
    if ID_COLUMN not in frame.columns:
        found = ", ".join(map(str, frame.columns[:5]))
        raise PosterRayError(f"{csv_path} line 1: no '{ID_COLUMN}' column (header starts: {found})")
    return frame


def genres_from_header(columns: list[str]) -> list[str]:
    """The genre vocabulary: every one-hot column of train.csv, in file order."""
    return [column for column in columns if column not in NON_GENRE_COLUMNS]


def check_one_hot(frame: pd.DataFrame, columns: list[str], csv_path: Path | Location) -> None:
    """Every genre (and N/A) cell must be 0 or 1; name the first bad cell."""
    if not columns:
        raise PosterRayError(f"{csv_path} line 1: no genre columns after '{ID_COLUMN}'")
    values = frame[columns].apply(lambda column: column.str.strip())
    bad = ~values.isin(["0", "1"])
    if bad.to_numpy().any():
        row, col = np.argwhere(bad.to_numpy())[0]
        raise PosterRayError(
            f"{csv_path} line {row + 2} (Id {frame[ID_COLUMN].iloc[row]!r}), "
            f"column '{columns[col]}': value {frame[columns[col]].iloc[row]!r} is not 0 or 1 "
            f"({int(bad.to_numpy().sum())} bad cells in all)"
        )


def clean_labels(frame: pd.DataFrame, genres: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply the dataset's rules; returns (kept rows: Id + genres as 0/1, dropped: why).

    Dropped: unsafe or empty ids, posters flagged N/A, posters with no genre, and
    repeated ids (identical repeats exist in the published CSV; the first row is kept).
    """
    table = frame.copy()
    table["line"] = np.arange(len(table)) + 2
    table[ID_COLUMN] = table[ID_COLUMN].str.strip()
    reasons = pd.Series("", index=table.index)
    labels = table[genres].apply(lambda column: column.str.strip().astype(np.uint8))

    reasons[~table[ID_COLUMN].map(lambda value: bool(_SAFE_ID.match(value)))] = "invalid Id"
    if NA_COLUMN in table.columns:
        flagged = table[NA_COLUMN].str.strip() == "1"
        reasons[(reasons == "") & flagged] = "flagged N/A"
    reasons[(reasons == "") & (labels.sum(axis=1) == 0)] = "no genre"

    candidates = reasons == ""
    ids = table[ID_COLUMN].where(candidates)
    row_keys = ids + "|" + labels.astype(str).agg("".join, axis=1)
    repeated = candidates & ids.duplicated(keep="first")
    identical = candidates & row_keys.duplicated(keep="first")
    reasons[identical] = "duplicate id"
    reasons[repeated & ~identical] = "duplicate id with other labels (first row kept)"

    keep = reasons == ""
    kept = pd.concat([table.loc[keep, [ID_COLUMN]], labels[keep]], axis=1)
    dropped = pd.DataFrame(
        {
            "id": table.loc[~keep, ID_COLUMN],
            "line": table.loc[~keep, "line"],
            "reason": reasons[~keep],
        }
    )
    return kept.reset_index(drop=True), dropped.reset_index(drop=True)


def attach_image_paths(
    kept: pd.DataFrame, images_dir: Location
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add each poster's path; rows whose image file is missing are dropped and listed.

    The folder is listed once: one request on a bucket, not one per poster. A missing
    folder is the user's layout, not thousands of missing posters, so it is said as such.
    """
    if not images_dir.is_dir():
        raise PosterRayError(
            f"{images_dir}: folder not found (the posters go there as <Id>.jpg, beside train.csv)"
        )
    present = {child.name for child in images_dir.iterdir()}
    names = [f"{poster_id}.jpg" for poster_id in kept[ID_COLUMN]]
    exists = np.array([name in present for name in names], dtype=bool)
    with_paths = kept.assign(path=[str(images_dir / name) for name in names])
    missing = pd.DataFrame(
        {"id": kept.loc[~exists, ID_COLUMN], "line": -1, "reason": "image missing"}
    )
    return with_paths[exists].reset_index(drop=True), missing.reset_index(drop=True)
