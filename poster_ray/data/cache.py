"""The decoded cache: every poster decoded once per image size, as uint8 Parquet rows.

Training, tuning, features and evaluation all read pixels from here, never from the
JPEGs, so they see the same pixels; a size a model needs (a pretrained backbone's
native resolution, say) is decoded beside the run's own the first time it is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
import ray
from ray.actor import ActorHandle

from poster_ray.config import PreprocessSpec
from poster_ray.data.context import all_cpus_to_one_operator
from poster_ray.data.tables import read_table
from poster_ray.errors import PosterRayError
from poster_ray.images import decode_files, pack_images
from poster_ray.layout import RunDir
from poster_ray.progress import counted_progress
from poster_ray.resources import TASK_CPUS
from poster_ray.runtime import init_ray
from poster_ray.storage import Location

# Rows per decode task: large enough to amortise Ray's per-task cost (32 ran at half the
# speed of 128 on 2 cores), small enough to keep every core busy to the end.
DECODE_BLOCK_ROWS = 128
# Rows per block of a split read back from the cache, unless a caller needs others.
BLOCK_ROWS = 64
# Written last into a decoded cache: its presence means the cache is complete.
DECODED_MARKER = "_decoded.json"


# ---------------------------------------------------------------- writing the cache


def decode_dataset(
    records: pd.DataFrame, spec: PreprocessSpec, counter: ActorHandle | None = None
) -> ray.data.Dataset:
    """A streaming Ray Dataset of decoded posters: one output row per input row.

    Each input row carries `path`; output rows add `image` (uint8, spec.shape) and
    `error` ("" when the poster decoded). Undecodable files are flagged, never fatal.
    Each task adds what it decoded to `counter` (a progress.RowCounter) when given.
    """
    items = records.to_dict("records")
    num_blocks = max(1, -(-len(items) // DECODE_BLOCK_ROWS))
    return ray.data.from_items(items, override_num_blocks=num_blocks).map_batches(
        _decode_batch, fn_kwargs={"spec": spec, "counter": counter}, batch_size=None
    )


def _decode_batch(
    batch: dict[str, np.ndarray], spec: PreprocessSpec, counter: ActorHandle | None
) -> dict[str, np.ndarray]:
    images, batch["error"] = decode_files(batch["path"], spec)
    batch["image"] = pack_images(images)
    if counter is not None:
        counter.add.remote(len(batch["error"]), int(np.count_nonzero(batch["error"] != "")))
    return batch


def decode_to_cache(records: pd.DataFrame, run: RunDir, spec: PreprocessSpec) -> None:
    """Decode every poster of `records` at `spec`'s size into the run's cache, in parallel;
    a marker file records that the cache is complete."""
    cache = run.cache(spec.image_size)
    cache.remove()
    print(f"Decoding {len(records)} posters at {spec.image_size}x{spec.image_size} ...", flush=True)
    with all_cpus_to_one_operator(), counted_progress(len(records)) as counter:
        decode_dataset(records, spec, counter).write_parquet(
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


# ---------------------------------------------------------------- reading it


def load_split(
    run: RunDir,
    split: str,
    image_size: int | None = None,
    task_cpus: float = TASK_CPUS,
    block_rows: int = BLOCK_ROWS,
) -> ray.data.Dataset:
    """One split's decoded posters from the cache: `image` (uint8 HxWx3) and `labels`.

    `image_size` defaults to the run's own; another size is decoded first if need be.
    Its tasks ask for `task_cpus` each and make blocks of about `block_rows` rows
    (read_cached_arrays).
    """
    spec = decoded_spec(run, image_size)
    location = run.cache_split(split, spec.image_size)
    return read_cached_arrays(location, "image", "uint8", spec.shape, task_cpus, block_rows)


def read_cached_arrays(
    location: Location | Sequence[Location],
    column: str,
    dtype: str,
    shape: tuple[int, ...],
    task_cpus: float = TASK_CPUS,
    block_rows: int = BLOCK_ROWS,
) -> ray.data.Dataset:
    """A cache's usable rows (at `location`, or several) as a Ray Dataset of `column`
    (arrays) and `labels`.

    Its tasks ask for `task_cpus` each: a block of a materialized split lost with its
    node is rebuilt by running its tasks again while the training workers hold their
    CPUs, so the tasks that feed workers ask for what the workers leave on a node. Each
    map task takes read blocks until it holds `block_rows` rows and returns them as one
    block: blocks of the size a caller needs, without Ray Data's repartition (its tasks
    ask for 1 CPU)."""
    from ray.data.expressions import col

    return (
        ray.data.read_parquet(
            [part.uri for part in ([location] if isinstance(location, Location) else location)],
            columns=[column, "labels", "error"],
            num_cpus=task_cpus,
        )
        .filter(expr=col("error") == "", num_cpus=task_cpus)
        .map_batches(
            _unpack_batch,
            fn_kwargs={"column": column, "dtype": dtype, "shape": shape},
            batch_size=block_rows,
            num_cpus=task_cpus,
        )
    )


def _unpack_batch(
    batch: dict[str, np.ndarray], column: str, dtype: str, shape: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """Raw bytes of `column` -> arrays, beside the labels."""
    return {column: unpack_arrays(batch[column], dtype, shape), "labels": batch["labels"]}


def unpack_arrays(blobs: np.ndarray, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """N raw byte strings (the caches' storage format) -> an (N, *shape) array."""
    return np.frombuffer(b"".join(blobs), dtype=dtype).reshape(len(blobs), *shape)


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


# ---------------------------------------------------------------- the manifest's answers


def train_labels(run: RunDir) -> np.ndarray:
    """The training split's label matrix, from the manifest: what baselines and class
    weights learn from."""
    manifest = read_table(run.manifest, ["split", "labels"])
    return np.stack(manifest.loc[manifest["split"] == "train", "labels"].to_numpy())


def split_sizes(run: RunDir) -> dict[str, int]:
    """Posters per split, from the manifest (a split's cache holds at most these)."""
    return read_table(run.manifest, ["split"])["split"].value_counts().to_dict()
