"""Parquet tables on any storage: the format of the manifest and of every cache."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from poster_ray.errors import RunFailure
from poster_ray.storage import REWRITE_HINT, Location


def read_table(location: Location, columns: list[str] | None = None) -> pd.DataFrame:
    """A Parquet file or a (hive-partitioned) folder of them, on any storage; a damaged
    one is one line naming it."""
    try:
        return pq.read_table(location.path, filesystem=location.fs, columns=columns).to_pandas()
    except pa.ArrowInvalid as error:
        raise damaged(location, error) from None


def check_readable(location: Location) -> None:
    """Read a Parquet file's footer (its schema and row groups), not its data: a file
    truncated or overwritten fails here, in one line, before any work starts."""
    try:
        with location.fs.open_input_file(location.path) as file:
            pq.read_metadata(file)
    except pa.ArrowInvalid as error:
        raise damaged(location, error) from None


def damaged(location: Location, error: Exception) -> RunFailure:
    reason = str(error).strip().splitlines()[0]
    return RunFailure(
        f"{location}: damaged, not a readable Parquet file ({reason}); {REWRITE_HINT}"
    )


def write_table(frame: pd.DataFrame, location: Location) -> None:
    """One Parquet file, committed atomically."""
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
    location.write_bytes(buffer.getvalue().to_pybytes())
