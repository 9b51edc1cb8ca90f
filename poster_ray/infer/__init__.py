"""Bulk inference: every poster of a folder, glob, list or Parquet file (local or on a
bucket) -> Parquet rows, one per file, in resumable chunks.

    inputs    what a job reads: the sorted poster list and its chunks
    output    the output folder's protocol: job record, atomic part commits, summary
    rows      the row schema, built a batch at a time
    decode    the decode stage's function
    actor     the model stage: one bundle per actor, in its hardware's precision
    pipeline  the Ray Data pipeline (decode tasks beside model actors) and the commits
    job       run_inference: all of it, and the summary

Files that cannot be read or decoded (missing, empty, truncated, not an image, a
decompression bomb) become error rows and skip the model; the job carries on. Its
progress line is poster_ray.progress's, as decoding's and feature extraction's are.

The job's names are loaded on first use: Ray's decode and model workers import this
package for their own small modules, and must not pay for the driver's imports (Ray
Data's executor, pandas): that cost seconds of start-up per worker.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_CHUNK_SIZE", "format_inference_summary", "run_inference"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from poster_ray.infer import job

        return getattr(job, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
