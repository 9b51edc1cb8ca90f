"""Data stage: train.csv -> clean labels -> stratified split -> decoded Parquet cache.

Every later stage (train, tune, evaluate) reads the run directory this stage writes,
so they all see the same genres, split and pixels.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

from poster_ray.config import (
    DATA_ENV_VAR,
    DATASET_URL,
    DEFAULT_DATA_DIR,
    ID_COLUMN,
    NA_COLUMN,
    NON_GENRE_COLUMNS,
    SPLIT_FRACTIONS,
    SPLITS,
    PreprocessSpec,
    RunDir,
)
from poster_ray.errors import PosterRayError
from poster_ray.images import decode_files, pack_images, unpack_images
from poster_ray.runtime import init_ray

# Ids name files: anything beyond these characters could escape the Images folder.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Rows per decode task: large enough to amortise Ray's per-task cost (32 ran at half the
# speed of 128 on 2 cores), small enough to keep every core busy to the end.
_ROWS_PER_BLOCK = 128


# ---------------------------------------------------------------- finding the data


def resolve_data_dir(data: str | None, environ: dict[str, str]) -> Path:
    """--data, else $POSTER_DATA, else the default folder, cloning the dataset into it."""
    chosen = data or environ.get(DATA_ENV_VAR)
    if chosen:
        path = Path(chosen)
        if not (path / "train.csv").is_file():
            raise PosterRayError(f"{path}: no train.csv there (expected train.csv + Images/)")
        return path
    if not (DEFAULT_DATA_DIR / "train.csv").is_file():
        clone_dataset(DEFAULT_DATA_DIR)
    return DEFAULT_DATA_DIR


def clone_dataset(target: Path) -> None:
    """Fetch the public dataset with git; one clear line when that is impossible."""
    print(f"Data folder {target} is missing: cloning {DATASET_URL} ...", flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    existed = target.exists()  # a folder the user made (say, without train.csv) is theirs
    try:
        subprocess.run(
            ["git", "clone", "--depth", "1", DATASET_URL, str(target)],
            check=True,
            capture_output=True,
            text=True,
            timeout=1800,
        )
    except (OSError, subprocess.SubprocessError) as error:
        if not existed:  # remove a partial clone, never the user's own files
            shutil.rmtree(target, ignore_errors=True)
        raise PosterRayError(
            f"could not clone {DATASET_URL} into {target} ({type(error).__name__}); "
            f"download it by hand and pass --data DIR or set {DATA_ENV_VAR}=DIR"
        ) from None


# ---------------------------------------------------------------- labels


def read_label_csv(csv_path: Path) -> pd.DataFrame:
    """Read train.csv as strings, so that every value can be checked before use."""
    if not csv_path.is_file():
        raise PosterRayError(f"{csv_path}: file not found")
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
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


def check_one_hot(frame: pd.DataFrame, columns: list[str], csv_path: Path) -> None:
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


def attach_image_paths(kept: pd.DataFrame, images_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add each poster's path; rows whose image file is missing are dropped and listed."""
    paths = [images_dir / f"{poster_id}.jpg" for poster_id in kept[ID_COLUMN]]
    exists = np.array([path.is_file() for path in paths], dtype=bool)
    with_paths = kept.assign(path=[str(path.resolve()) for path in paths])
    missing = pd.DataFrame(
        {"id": kept.loc[~exists, ID_COLUMN], "line": -1, "reason": "image missing"}
    )
    return with_paths[exists].reset_index(drop=True), missing.reset_index(drop=True)


# ---------------------------------------------------------------- split


def split_rows(labels: np.ndarray, seed: int) -> np.ndarray:
    """Assign each row to train/val/test (70/15/15) by iterative stratification."""
    if len(labels) < 10:
        raise PosterRayError(f"only {len(labels)} usable posters: at least 10 are needed to split")
    rest_fraction = 1.0 - SPLIT_FRACTIONS["train"]
    test_share_of_rest = SPLIT_FRACTIONS["test"] / rest_fraction
    assignment = np.full(len(labels), "train", dtype=object)
    first = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=rest_fraction, random_state=seed)
    _, rest = next(first.split(np.zeros(len(labels)), labels))
    second = MultilabelStratifiedShuffleSplit(
        n_splits=1, test_size=test_share_of_rest, random_state=seed
    )
    val_in_rest, test_in_rest = next(second.split(np.zeros(len(rest)), labels[rest]))
    assignment[rest[val_in_rest]] = "val"
    assignment[rest[test_in_rest]] = "test"
    return spread_rare_genres(labels, assignment)


def spread_rare_genres(
    labels: np.ndarray, assignment: np.ndarray, min_count: int = 3
) -> np.ndarray:
    """Move single posters so every genre with >= min_count posters is in every split.

    Iterative stratification sends a 3-poster genre 2/1/0, leaving it unmeasurable in
    one split; a poster moves from the split richest in that genre, choosing one whose
    other genres stay present in its old split.
    """
    assignment = assignment.copy()
    for genre in np.flatnonzero(labels.sum(axis=0) >= min_count):
        for split in SPLITS:
            counts = {name: int(labels[assignment == name, genre].sum()) for name in SPLITS}
            if counts[split] > 0:
                continue
            donor = max(counts, key=counts.get)
            in_donor = assignment == donor
            donor_counts = labels[in_donor].sum(axis=0)
            candidates = np.flatnonzero(in_donor & (labels[:, genre] == 1))
            # Prefer posters whose genres all have spares in the donor split.
            spare = [row for row in candidates if (donor_counts[labels[row] == 1] > 1).all()]
            assignment[(spare or list(candidates))[0]] = split
    return assignment


# ---------------------------------------------------------------- Ray Data


def decode_dataset(records: pd.DataFrame, spec: PreprocessSpec) -> ray.data.Dataset:
    """A streaming Ray Dataset of decoded posters: one output row per input row.

    Each input row carries `path`; output rows add `image` (uint8, spec.shape) and
    `error` ("" when the poster decoded). Undecodable files are flagged, never fatal.
    """
    items = records.to_dict("records")
    num_blocks = max(1, -(-len(items) // _ROWS_PER_BLOCK))
    return ray.data.from_items(items, override_num_blocks=num_blocks).map_batches(
        _decode_batch, fn_kwargs={"spec": spec}, batch_size=None
    )


@contextmanager
def all_cpus_to_one_operator() -> Iterator[None]:
    """Let a one-operator pipeline use every CPU while it runs.

    Ray Data reserves part of the CPUs for operators that a single read->decode->write
    chain does not have: on 2 cores that left decoding at 1.2 tasks in flight, 0.7x the
    speed with it off (bench/preprocess_throughput.py).
    """
    context = ray.data.DataContext.get_current()
    previous = context.op_resource_reservation_enabled
    context.op_resource_reservation_enabled = False
    try:
        yield
    finally:
        context.op_resource_reservation_enabled = previous


@contextmanager
def without_progress_bars() -> Iterator[None]:
    """Build datasets without progress bars (a dataset keeps the context it was made in),
    leaving the process's own setting as it was."""
    context = ray.data.DataContext.get_current()
    previous = context.enable_progress_bars
    context.enable_progress_bars = False
    try:
        yield
    finally:
        context.enable_progress_bars = previous


def _decode_batch(batch: dict[str, np.ndarray], spec: PreprocessSpec) -> dict[str, np.ndarray]:
    images, batch["error"] = decode_files(batch["path"], spec)
    batch["image"] = pack_images(images)
    return batch


def _unpack_batch(
    batch: dict[str, np.ndarray], spec: PreprocessSpec, shard: tuple[int, int] | None
) -> dict[str, np.ndarray]:
    keep = np.ones(len(batch["id"]), dtype=bool)
    if shard is not None:
        keep = shard_of(batch["id"], shard[1]) == shard[0]
    return {"image": unpack_images(batch["image"][keep], spec), "labels": batch["labels"][keep]}


def shard_of(ids: np.ndarray, num_shards: int) -> np.ndarray:
    """A stable shard number per poster id, the same in every process and run."""
    return np.array([zlib.crc32(str(poster_id).encode()) % num_shards for poster_id in ids])


def shard_sizes(run: RunDir, split: str, num_shards: int) -> list[int]:
    """How many posters of `split` each shard holds (from the manifest, no reading)."""
    manifest = pd.read_parquet(run.manifest, columns=["id", "split"])
    shards = shard_of(manifest.loc[manifest["split"] == split, "id"].to_numpy(), num_shards)
    return np.bincount(shards, minlength=num_shards).tolist()


def load_split(run: RunDir, split: str, shard: tuple[int, int] | None = None) -> ray.data.Dataset:
    """One split's decoded posters from the cache: `image` (uint8 HxWx3) and `labels`.

    `shard` (index, count) keeps one disjoint part of the split, chosen by id.
    """
    from ray.data.expressions import col

    path = run.cache_split(split)
    if not path.is_dir():
        raise PosterRayError(f"{path}: no cached split; run `poster-ray prepare` first")
    spec = PreprocessSpec.load(run.preprocess)
    return (
        ray.data.read_parquet(
            str(path.resolve()),  # Ray's workers need not share the driver's directory
            columns=["id", "image", "labels", "error"],
        )
        .filter(expr=col("error") == "")
        .map_batches(_unpack_batch, fn_kwargs={"spec": spec, "shard": shard}, batch_size=64)
    )


def read_split_arrays(run: RunDir, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, images, labels) of one split as numpy arrays, for single-process use."""
    table = pq.read_table(run.cache_split(split), columns=["id", "image", "labels", "error"])
    frame = table.filter(pc.equal(table["error"], "")).to_pandas()
    spec = PreprocessSpec.load(run.preprocess)
    return (
        frame["id"].to_numpy(),
        unpack_images(frame["image"].to_numpy(), spec),
        np.stack(frame["labels"].to_numpy()),
    )


# ---------------------------------------------------------------- the prepare stage


def prepare(
    data_dir: Path,
    run: RunDir,
    spec: PreprocessSpec,
    seed: int = 42,
    limit: int | None = None,
    num_cpus: int | None = None,
) -> dict:
    """Validate, clean, split and decode the dataset into `run`; return the summary.

    Ray starts (or is joined) only once the labels are valid, so bad input fails fast.
    """
    if spec.image_size < 1:
        raise PosterRayError(f"--image-size must be at least 1, got {spec.image_size}")
    started = time.perf_counter()
    csv_path = data_dir / "train.csv"
    frame = read_label_csv(csv_path)
    genres = genres_from_header(list(frame.columns))
    check_one_hot(frame, [*genres, NA_COLUMN] if NA_COLUMN in frame.columns else genres, csv_path)
    kept, dropped_rows = clean_labels(frame, genres)
    records, missing = attach_image_paths(kept, data_dir / "Images")
    if limit is not None and limit < len(records):
        records = records.sample(n=limit, random_state=seed).reset_index(drop=True)

    labels = records[genres].to_numpy(dtype=np.uint8)
    records = pd.DataFrame(
        {
            "id": records[ID_COLUMN],
            "path": records["path"],
            "split": split_rows(labels, seed),
            "labels": list(labels),
        }
    )

    init_ray(num_cpus)
    run.root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(run.cache, ignore_errors=True)
    print(f"Decoding {len(records)} posters at {spec.image_size}x{spec.image_size} ...", flush=True)
    with all_cpus_to_one_operator():
        decode_dataset(records, spec).write_parquet(
            str(run.cache), partition_cols=["split"], compression="none", use_dictionary=False
        )

    errors = pq.read_table(run.cache, columns=["id", "error"]).to_pandas()
    bad = errors[errors["error"] != ""]
    bad_files = pd.DataFrame({"id": bad["id"], "line": -1, "reason": "unreadable: " + bad["error"]})
    manifest = records[~records["id"].isin(bad["id"])].reset_index(drop=True)

    manifest.to_parquet(run.manifest, index=False)
    run.genres.write_text(json.dumps(genres, indent=1) + "\n")
    spec.save(run.preprocess)
    dropped = pd.concat([dropped_rows, missing, bad_files], ignore_index=True)
    dropped.to_csv(run.dropped, index=False)

    summary = summarize(frame, manifest, dropped, genres, spec, data_dir, seed)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    run.summary.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def summarize(
    frame: pd.DataFrame,
    manifest: pd.DataFrame,
    dropped: pd.DataFrame,
    genres: list[str],
    spec: PreprocessSpec,
    data_dir: Path,
    seed: int,
) -> dict:
    """What prepare kept and dropped and why, and the genre counts of each split."""
    labels = (
        np.stack(manifest["labels"].to_numpy()) if len(manifest) else np.zeros((0, len(genres)))
    )
    splits = {}
    for split in SPLITS:
        in_split = (manifest["split"] == split).to_numpy()
        counts = labels[in_split].sum(axis=0).astype(int)
        splits[split] = {
            "posters": int(in_split.sum()),
            "genre_counts": dict(zip(genres, counts.tolist(), strict=True)),
        }
    ids_per_split = manifest.groupby("id")["split"].nunique()
    return {
        "data_dir": str(data_dir),
        "csv_rows": len(frame),
        "kept": len(manifest),
        "dropped": {
            reason: int(n)
            for reason, n in dropped["reason"].str.split(":").str[0].value_counts().items()
        },
        "bad_files": dropped[dropped["reason"].str.startswith("unreadable")]["id"].tolist(),
        "genres": genres,
        "num_genres": len(genres),
        "image_size": spec.image_size,
        "seed": seed,
        "splits": splits,
        "ids_in_two_splits": int((ids_per_split > 1).sum()),
    }


def format_summary(summary: dict) -> str:
    """A human-readable view of the prepare summary."""
    lines = [
        f"data:     {summary['data_dir']} ({summary['csv_rows']} CSV rows)",
        f"kept:     {summary['kept']} posters, {summary['num_genres']} genres, "
        f"{summary['image_size']}x{summary['image_size']} px",
        "dropped:  "
        + (", ".join(f"{n} {why}" for why, n in summary["dropped"].items()) or "nothing"),
        "splits:   "
        + ", ".join(f"{name} {info['posters']}" for name, info in summary["splits"].items())
        + f" (ids in two splits: {summary['ids_in_two_splits']})",
    ]
    if summary["bad_files"]:
        lines.append(f"bad files: {', '.join(summary['bad_files'][:10])}")
    lines.append("")
    lines.append(f"{'genre':<12}" + "".join(f"{name:>8}" for name in summary["splits"]))
    for genre in summary["genres"]:
        counts = [info["genre_counts"][genre] for info in summary["splits"].values()]
        lines.append(f"{genre:<12}" + "".join(f"{n:>8}" for n in counts))
    return "\n".join(lines)
