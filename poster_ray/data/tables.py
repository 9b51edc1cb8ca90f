"""Parquet tables on any storage: the format of the manifest and of every cache."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from poster_ray.storage import Location


def read_table(location: Location, columns: list[str] | None = None) -> pd.DataFrame:
    """A Parquet file or a (hive-partitioned) folder of them, on any storage."""
    return pq.read_table(location.path, filesystem=location.fs, columns=columns).to_pandas()


def write_table(frame: pd.DataFrame, location: Location) -> None:
    """One Parquet file, committed atomically."""
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
    location.write_bytes(buffer.getvalue().to_pybytes())
