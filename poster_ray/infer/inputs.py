"""What a job reads: the sorted, de-duplicated list of poster paths, cut into chunks.

A source is a folder, a glob, a text file of paths (one a line) or a Parquet file with
a `path` column, each either local or on a bucket (`s3://bucket/posters/`, `file://`).
Local paths are absolute (relative ones resolve against the working directory); paths
on a bucket stay URIs, and the rows of the output name them so.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq

from poster_ray.errors import PosterRayError
from poster_ray.storage import Location, absolute, is_uri

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
_WILDCARD = re.compile(r"[*?\[]")


def resolve_inputs(source: str) -> list[str]:
    """Absolute, sorted, de-duplicated paths or URIs from a folder, list, Parquet or glob."""
    try:
        found = uri_inputs(source) if is_uri(source) else local_inputs(source)
    except OSError as error:  # a bucket that is not there, no credentials, no network
        reason = str(error).splitlines()[0]
        raise PosterRayError(f"{source}: cannot read the input ({reason})") from None
    paths = sorted({absolute(path) for path in found})
    if not paths:
        raise PosterRayError(f"{source}: no poster files found")
    check_utf8_names(paths)
    return paths


def local_inputs(source: str) -> list[str]:
    """A local source's paths, as written (a list file may hold relative paths or URIs)."""
    if os.path.isdir(source):
        return [path for path in files_below(Location.of(source)) if is_image(path)]
    if os.path.isfile(source):
        return paths_in_file(Location.of(source))
    if _WILDCARD.search(source):
        return [match for match in glob.glob(source, recursive=True) if not os.path.isdir(match)]
    raise PosterRayError(f"{source}: no such folder, file or matching glob")


def uri_inputs(source: str) -> list[str]:
    """A bucket source's URIs: a prefix (folder), a list or Parquet file, or a glob."""
    location = Location.of(source)
    match = _WILDCARD.search(location.uri)
    if match:
        # List below the last folder before the first wildcard, then match whole URIs.
        base = Location(location.uri[: match.start()].rsplit("/", 1)[0])
        return [uri for uri in files_below(base) if fnmatch.fnmatchcase(uri, location.uri)]
    if location.is_dir():
        return [uri for uri in files_below(location) if is_image(uri)]
    if location.is_file():
        return paths_in_file(location)
    raise PosterRayError(f"{source}: no such folder, file or matching glob")


def files_below(folder: Location) -> list[str]:
    """Every file below `folder`, named the way `folder` is (a local path or a URI)."""
    if not is_uri(folder.uri):
        return folder.files()
    scheme = folder.uri.split("://", 1)[0]
    return [f"{scheme}://{path}" for path in folder.files()]


def is_image(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def paths_in_file(location: Location) -> list[str]:
    """The paths a Parquet file's `path` column or a text file's lines name."""
    if location.name.lower().endswith(".parquet"):
        return paths_in_parquet(location)
    try:
        lines = location.read_text().splitlines()
    except UnicodeDecodeError:
        raise PosterRayError(
            f"{location}: not a UTF-8 text file (expected one poster path per line)"
        ) from None
    return [line for line in lines if line.strip()]


def paths_in_parquet(location: Location) -> list[str]:
    """The non-empty values of the file's `path` column."""
    try:
        table = pq.read_table(location.path, filesystem=location.fs, columns=["path"])
        column = table.column("path")
    except (pa.ArrowException, KeyError) as error:
        reason = str(error).splitlines()[0]
        raise PosterRayError(f"{location}: no readable 'path' column ({reason})") from None
    return [str(value) for value in column.to_pylist() if value]


def check_utf8_names(paths: list[str]) -> None:
    """Parquet strings are UTF-8: a file name with undecodable bytes cannot be a row."""
    for path in paths:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            raise PosterRayError(
                f"{path!r}: file name is not valid UTF-8; rename it or leave it out"
            ) from None


def chunk_bounds(num_paths: int, chunk_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each chunk: fixed by position, so every rerun cuts the same."""
    return [
        (start, min(start + chunk_size, num_paths)) for start in range(0, num_paths, chunk_size)
    ]
