"""The rows of the output: one per input file, flat, so SQL and pandas read them as is.

::

    path             string   absolute path, or the URI for inputs on a bucket
    id               string   the file name without its extension
    top1_genre       string   most probable genre; null on error rows
    top1_prob        float32  its probability; null on error rows
    top2_genre, top2_prob, top3_genre, top3_prob    the same for the next two
    above_threshold  list<string>  genres at or above their bundle threshold, by prob
    probabilities    fixed_size_list<float32>[num_genres], bundle genre order; null on
                     error rows (only with --all-probabilities)
    bundle_hash      string   the bundle's content_hash
    status           string   "ok" or "error"
    error            string   why the file could not be used; "" when ok

A batch's rows are built with array operations, not a Python loop per row: on a fast
model the model actor would otherwise spend a noticeable share of its core on them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from poster_ray.predict import TOP_K


def output_schema(num_genres: int, all_probabilities: bool) -> pa.Schema:
    """The one schema of every part file (see the module docstring)."""
    fields = [pa.field("path", pa.string()), pa.field("id", pa.string())]
    for rank in range(1, TOP_K + 1):
        fields += [
            pa.field(f"top{rank}_genre", pa.string()),
            pa.field(f"top{rank}_prob", pa.float32()),
        ]
    fields.append(pa.field("above_threshold", pa.list_(pa.string())))
    if all_probabilities:
        fields.append(pa.field("probabilities", pa.list_(pa.float32(), num_genres)))
    fields += [
        pa.field("bundle_hash", pa.string()),
        pa.field("status", pa.string()),
        pa.field("error", pa.string()),
    ]
    return pa.schema(fields)


def file_id(path: str) -> str:
    """The file name without its extension, for a local path or a URI alike."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    stem, dot, _ = name.rpartition(".")
    return stem if dot and stem else name


def rows_table(
    paths: np.ndarray,
    errors: np.ndarray,
    probabilities: np.ndarray,
    genres: list[str],
    thresholds: np.ndarray,
    bundle_hash: str,
    all_probabilities: bool,
) -> pa.Table:
    """The output rows of a batch.

    `errors` holds "" for files that decoded; `probabilities` (N x genres) is ignored on
    the other rows, which become error rows. Ties between genres keep genre order.
    """
    ok = errors == ""
    count, num_genres = len(paths), len(genres)
    probabilities = np.asarray(probabilities, dtype=np.float32).reshape(count, num_genres)
    order = np.argsort(-probabilities, axis=1, kind="stable")
    ranked = np.take_along_axis(probabilities, order, axis=1)
    names = np.asarray(genres, dtype=object)
    columns: dict[str, pa.Array] = {
        "path": pa.array(paths.astype(str), pa.string()),
        "id": pa.array([file_id(str(path)) for path in paths], pa.string()),
    }
    for rank in range(min(TOP_K, num_genres)):
        columns[f"top{rank + 1}_genre"] = pa.array(names[order[:, rank]], pa.string(), mask=~ok)
        columns[f"top{rank + 1}_prob"] = pa.array(ranked[:, rank], pa.float32(), mask=~ok)
    for rank in range(num_genres, TOP_K):  # fewer genres than ranks: always null
        columns[f"top{rank + 1}_genre"] = pa.nulls(count, pa.string())
        columns[f"top{rank + 1}_prob"] = pa.nulls(count, pa.float32())
    above = (ranked >= np.take(thresholds, order)) & ok[:, None]
    offsets = np.concatenate([[0], np.cumsum(above.sum(axis=1))]).astype(np.int32)
    columns["above_threshold"] = pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(names[order][above], pa.string())
    )
    if all_probabilities:
        columns["probabilities"] = pa.FixedSizeListArray.from_arrays(
            pa.array(probabilities.reshape(-1)), num_genres, mask=pa.array(~ok)
        )
    columns["bundle_hash"] = pa.array([bundle_hash] * count, pa.string())
    columns["status"] = pa.array(np.where(ok, "ok", "error"), pa.string())
    columns["error"] = pa.array(errors.astype(str), pa.string())
    return pa.table(columns, schema=output_schema(num_genres, all_probabilities))
