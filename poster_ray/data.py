"""Data stage: train.csv -> clean labels -> stratified split -> decoded Parquet cache.

Every later stage (train, tune, evaluate) reads the run directory this stage writes,
so they all see the same genres, split and pixels.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
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
)
from poster_ray.errors import PosterRayError
from poster_ray.images import decode_files, pack_images
from poster_ray.layout import RunDir
from poster_ray.runtime import init_ray
from poster_ray.storage import Location

# Ids name files: anything beyond these characters could escape the Images folder.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Rows per decode task: large enough to amortise Ray's per-task cost (32 ran at half the
# speed of 128 on 2 cores), small enough to keep every core busy to the end.
_ROWS_PER_BLOCK = 128
# Written last into a decoded cache: its presence means the cache is complete.
DECODED_MARKER = "_decoded.json"


# ---------------------------------------------------------------- finding the data


def resolve_data_dir(data: str | None, environ: dict[str, str]) -> Location:
    """--data (a folder or URI), else $POSTER_DATA, else the default folder, cloning the
    dataset into it."""
    chosen = data or environ.get(DATA_ENV_VAR)
    if chosen:
        location = Location.of(chosen)
        if not (location / "train.csv").is_file():
            raise PosterRayError(f"{chosen}: no train.csv there (expected train.csv + Images/)")
        return location
    if not (DEFAULT_DATA_DIR / "train.csv").is_file():
        clone_dataset(DEFAULT_DATA_DIR)
    return Location.of(DEFAULT_DATA_DIR)


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


def attach_image_paths(
    kept: pd.DataFrame, images_dir: Location
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add each poster's path; rows whose image file is missing are dropped and listed.

    The folder is listed once: one request on a bucket, not one per poster.
    """
    present = {child.name for child in images_dir.iterdir()}
    names = [f"{poster_id}.jpg" for poster_id in kept[ID_COLUMN]]
    exists = np.array([name in present for name in names], dtype=bool)
    with_paths = kept.assign(path=[str(images_dir / name) for name in names])
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
def data_context(**settings) -> Iterator[None]:
    """Ray Data's context with `settings` while the block runs, as it was afterwards."""
    context = ray.data.DataContext.get_current()
    previous = {name: getattr(context, name) for name in settings}
    for name, value in settings.items():
        setattr(context, name, value)
    try:
        yield
    finally:
        for name, value in previous.items():
            setattr(context, name, value)


def all_cpus_to_one_operator():
    """Let a one-operator pipeline use every CPU while it runs.

    Ray Data reserves part of the CPUs for operators that a single read->decode->write
    chain does not have: on 2 cores that left decoding at 1.2 tasks in flight, 0.7x the
    speed with it off (bench/preprocess_throughput.py).
    """
    return data_context(op_resource_reservation_enabled=False)


def without_progress_bars():
    """Build datasets without progress bars (a dataset keeps the context it was made in)."""
    return data_context(enable_progress_bars=False)


def _decode_batch(batch: dict[str, np.ndarray], spec: PreprocessSpec) -> dict[str, np.ndarray]:
    images, batch["error"] = decode_files(batch["path"], spec)
    batch["image"] = pack_images(images)
    return batch


def _unpack_batch(
    batch: dict[str, np.ndarray],
    column: str,
    dtype: str,
    shape: tuple[int, ...],
    shard: tuple[int, int] | None,
) -> dict[str, np.ndarray]:
    """Raw bytes of `column` -> arrays; keep this shard's rows; drop the rest."""
    keep = np.ones(len(batch["id"]), dtype=bool)
    if shard is not None:
        keep = shard_of(batch["id"], shard[1]) == shard[0]
    return {
        column: unpack_arrays(batch[column][keep], dtype, shape),
        "labels": batch["labels"][keep],
    }


def unpack_arrays(blobs: np.ndarray, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """N raw byte strings (the caches' storage format) -> an (N, *shape) array."""
    return np.frombuffer(b"".join(blobs), dtype=dtype).reshape(len(blobs), *shape)


def shard_of(ids: np.ndarray, num_shards: int) -> np.ndarray:
    """A stable shard number per poster id, the same in every process and run."""
    return np.array([zlib.crc32(str(poster_id).encode()) % num_shards for poster_id in ids])


def read_table(location: Location, columns: list[str] | None = None) -> pd.DataFrame:
    """A Parquet file or a (hive-partitioned) folder of them, on any storage."""
    return pq.read_table(location.path, filesystem=location.fs, columns=columns).to_pandas()


def write_table(frame: pd.DataFrame, location: Location) -> None:
    """One Parquet file, committed atomically."""
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
    location.write_bytes(buffer.getvalue().to_pybytes())


def train_labels(run: RunDir) -> np.ndarray:
    """The training split's label matrix, from the manifest: what baselines and class
    weights learn from."""
    manifest = read_table(run.manifest, ["split", "labels"])
    return np.stack(manifest.loc[manifest["split"] == "train", "labels"].to_numpy())


def shard_sizes(run: RunDir, split: str, num_shards: int) -> list[int]:
    """How many posters of `split` each shard holds (from the manifest, no reading)."""
    manifest = read_table(run.manifest, columns=["id", "split"])
    shards = shard_of(manifest.loc[manifest["split"] == split, "id"].to_numpy(), num_shards)
    return np.bincount(shards, minlength=num_shards).tolist()


def load_split(
    run: RunDir, split: str, shard: tuple[int, int] | None = None, image_size: int | None = None
) -> ray.data.Dataset:
    """One split's decoded posters from the cache: `image` (uint8 HxWx3) and `labels`.

    `shard` (index, count) keeps one disjoint part of the split, chosen by id.
    `image_size` defaults to the run's own; another size is decoded first if need be.
    """
    spec = decoded_spec(run, image_size)
    return read_cached_arrays(
        run.cache_split(split, spec.image_size), "image", "uint8", spec.shape, shard
    )


def read_cached_arrays(
    location: Location,
    column: str,
    dtype: str,
    shape: tuple[int, ...],
    shard: tuple[int, int] | None = None,
) -> ray.data.Dataset:
    """A cache's usable rows as a Ray Dataset of `column` (arrays) and `labels`."""
    from ray.data.expressions import col

    return (
        ray.data.read_parquet(location.uri, columns=["id", column, "labels", "error"])
        .filter(expr=col("error") == "")
        .map_batches(
            _unpack_batch,
            fn_kwargs={"column": column, "dtype": dtype, "shape": shape, "shard": shard},
            batch_size=64,
        )
    )


def read_split_arrays(
    run: RunDir, split: str, image_size: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, images, labels) of one split as numpy arrays, for single-process use."""
    spec = decoded_spec(run, image_size)
    frame = read_table(run.cache_split(split, spec.image_size), ["id", "image", "labels", "error"])
    frame = frame[frame["error"] == ""]
    return (
        frame["id"].to_numpy(),
        unpack_arrays(frame["image"].to_numpy(), "uint8", spec.shape),
        np.stack(frame["labels"].to_numpy()),
    )


def decode_to_cache(records: pd.DataFrame, run: RunDir, spec: PreprocessSpec) -> None:
    """Decode every poster of `records` at `spec`'s size into the run's cache, in parallel;
    a marker file records that the cache is complete."""
    cache = run.cache(spec.image_size)
    cache.remove()
    print(f"Decoding {len(records)} posters at {spec.image_size}x{spec.image_size} ...", flush=True)
    with all_cpus_to_one_operator():
        decode_dataset(records, spec).write_parquet(
            cache.uri, partition_cols=["split"], compression="none", use_dictionary=False
        )
    (cache / DECODED_MARKER).write_json({"posters": len(records), "image_size": spec.image_size})


def decoded_spec(run: RunDir, image_size: int | None = None) -> PreprocessSpec:
    """The run's preprocessing at `image_size` (default: the run's own), its posters
    decoded at that size first if they are not yet."""
    if not run.manifest.is_file():
        raise PosterRayError(f"{run.root}: not a prepared run; run `poster-ray prepare` first")
    spec = run.load_spec()
    spec = replace(spec, image_size=image_size or spec.image_size)
    ensure_decoded(run, spec.image_size)
    return spec


def ensure_decoded(run: RunDir, image_size: int) -> None:
    """Decode the run's posters at `image_size` unless that cache is complete: a
    pretrained model's native resolution, say, beside the run's own."""
    if (run.cache(image_size) / DECODED_MARKER).is_file():
        return
    init_ray()
    decode_to_cache(read_table(run.manifest), run, replace(run.load_spec(), image_size=image_size))


# ---------------------------------------------------------------- the prepare stage


def prepare(
    data_dir: Location | str,
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
    data_dir = Location.of(data_dir)
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
    warn_if_local_on_a_cluster(run.root)
    run.root.mkdir()
    for derived in ("cache", "features"):  # decoded at other sizes from an older manifest
        (run.root / derived).remove()
    decode_to_cache(records, run, spec)

    errors = read_table(run.cache(spec.image_size), columns=["id", "error"])
    bad = errors[errors["error"] != ""]
    bad_files = pd.DataFrame({"id": bad["id"], "line": -1, "reason": "unreadable: " + bad["error"]})
    manifest = records[~records["id"].isin(bad["id"])].reset_index(drop=True)

    write_table(manifest, run.manifest)
    run.genres.write_json(genres)
    spec.save(run.preprocess)
    dropped = pd.concat([dropped_rows, missing, bad_files], ignore_index=True)
    run.dropped.write_text(dropped.to_csv(index=False))

    summary = summarize(frame, manifest, dropped, genres, spec, data_dir, seed)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    run.summary.write_json(summary)
    return summary


def warn_if_local_on_a_cluster(root: Location) -> None:
    """Every node writes its part of the cache: on several nodes, a run directory on
    one node's own disk would be scattered."""
    nodes = [node for node in ray.nodes() if node["Alive"]]
    if root.is_local and len(nodes) > 1:
        print(
            f"warning: {root} is a local path and the Ray cluster has {len(nodes)} nodes: "
            "it must be a mount every node shares, or use an s3:// or gs:// run directory"
        )


def summarize(
    frame: pd.DataFrame,
    manifest: pd.DataFrame,
    dropped: pd.DataFrame,
    genres: list[str],
    spec: PreprocessSpec,
    data_dir: Location,
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
