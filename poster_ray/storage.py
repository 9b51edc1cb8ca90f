"""Where files live: local paths, shared mounts and bucket URIs behind one small API.

Every stage reads and writes through a `Location`: a local path or a URI (`s3://`,
`gs://`, `file://`) resolved into a pyarrow filesystem and a path inside it, the same
filesystems Ray Data, Train and Tune use. A finished file is committed atomically: on a
local or shared filesystem it is written beside its name and renamed; on an object store
a single PUT (or a completed multipart upload) makes the object appear whole or not at
all. Bucket credentials come from the environment or the instance profile, as pyarrow's
S3 client reads them; nothing here stores them.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from poster_ray.errors import PosterRayError, RunFailure

# Relative paths in a job submitted with `ray job submit` resolve against this base (a
# URI or a path on shared storage): the job's working directory is a temporary copy.
STORAGE_ENV_VAR = "POSTER_RAY_STORAGE"
# What to do with a damaged file of a run: the stage that wrote it writes it again.
REWRITE_HINT = "rerun the stage that wrote it (prepare, train, tune) to write it again"


def is_uri(path: str) -> bool:
    return "://" in path


def absolute(path: str | os.PathLike) -> str:
    """`path` as an absolute local path or a URI.

    A relative path is taken from the working directory, except in a submitted Ray job,
    whose working directory is a temporary copy that vanishes with it: there it is taken
    from $POSTER_RAY_STORAGE, or refused.
    """
    text = os.fspath(path)
    if is_uri(text):
        return text.rstrip("/")
    if os.path.isabs(text):
        return os.path.normpath(text)
    from poster_ray.runtime import submitted_job_runtime_env  # Ray, only when needed

    if submitted_job_runtime_env() is not None:
        base = os.environ.get(STORAGE_ENV_VAR)
        if not base:
            raise PosterRayError(
                f"{text}: a relative path in a submitted Ray job would land in the job's "
                f"temporary copy of the working directory; give an absolute path or a URI, "
                f"or set {STORAGE_ENV_VAR} (e.g. s3://bucket/poster-ray) as the base"
            )
        return str(Location(absolute(base)) / text)
    return os.path.abspath(text)


@cache
def _filesystem(scheme_and_bucket: str) -> pafs.FileSystem:
    """One filesystem per scheme and bucket per process: S3 clients are costly to make."""
    return pafs.FileSystem.from_uri(scheme_and_bucket)[0]


@dataclass(frozen=True)
class Location:
    """A file or folder on some filesystem, named by an absolute path or a URI."""

    uri: str

    @classmethod
    def of(cls, path: str | os.PathLike | Location) -> Location:
        return path if isinstance(path, Location) else cls(absolute(path))

    # ------------------------------------------------------------ naming

    @property
    def is_local(self) -> bool:
        return not is_uri(self.uri) or self.uri.startswith("file://")

    @cached_property
    def _resolved(self) -> tuple[pafs.FileSystem, str]:
        if not is_uri(self.uri):
            return pafs.LocalFileSystem(), self.uri
        scheme, rest = self.uri.split("://", 1)
        if scheme == "file":
            return pafs.LocalFileSystem(), "/" + rest.lstrip("/")
        bucket = rest.split("/", 1)[0]
        try:
            filesystem = _filesystem(f"{scheme}://{bucket}")
        except (pafs.ArrowException, OSError, ValueError) as error:
            raise PosterRayError(f"{self.uri}: cannot open this storage ({error})") from None
        return filesystem, rest

    @property
    def fs(self) -> pafs.FileSystem:
        return self._resolved[0]

    @property
    def path(self) -> str:
        """The path inside `fs` (no scheme), as pyarrow and Ray take it with `fs`."""
        return self._resolved[1]

    @property
    def local_path(self) -> Path:
        if not self.is_local:
            raise ValueError(f"{self.uri} is not on a local filesystem")
        return Path(self.path)

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> Location:
        return Location(self.uri.rstrip("/").rsplit("/", 1)[0])

    def __truediv__(self, name: str) -> Location:
        return Location(f"{self.uri.rstrip('/')}/{name}")

    def __str__(self) -> str:
        return self.uri

    def __fspath__(self) -> str:
        """Local locations stand in for paths (open, shutil, PIL); remote ones cannot."""
        return str(self.local_path)

    # ------------------------------------------------------------ asking

    def _info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def size(self) -> int:
        return self._info().size

    def iterdir(self) -> list[Location]:
        """Immediate children, sorted by name; [] when there is no such folder."""
        if not self.is_dir():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return sorted((self / Path(info.path).name for info in infos), key=lambda loc: loc.uri)

    def glob(self, pattern: str) -> list[Location]:
        """Children whose name matches `pattern` (one level, like pathlib's `glob("*.x")`)."""
        return [child for child in self.iterdir() if fnmatch.fnmatch(child.name, pattern)]

    def files(self) -> list[str]:
        """Paths (inside `fs`) of every file below this folder, sorted."""
        selector = pafs.FileSelector(self.path, recursive=True, allow_not_found=True)
        infos = self.fs.get_file_info(selector)
        return sorted(info.path for info in infos if info.type == pafs.FileType.File)

    # ------------------------------------------------------------ reading

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as stream:
            return stream.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def read_json(self) -> Any:
        """The file's JSON value; a damaged file is one line naming it (RunFailure)."""
        try:
            return json.loads(self.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RunFailure(f"{self}: damaged, not valid JSON ({error}); {REWRITE_HINT}") from None

    # ------------------------------------------------------------ writing

    def mkdir(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def write_bytes(self, data: bytes, sync: bool = True) -> None:
        """Write the whole file at once, atomically (see the module docstring).
        `sync=False` skips forcing it to disk first, for files cheap to make again (a
        gallery's thumbnails and pages): fsync cost 17 ms a file here, a thumbnail 2."""
        self.parent.mkdir()
        if not self.is_local:
            with self.fs.open_output_stream(self.path) as stream:
                stream.write(data)
            return
        staging = self.parent / f".{self.name}.{uuid.uuid4().hex}.tmp"
        try:
            with open(staging.path, "wb") as file:
                file.write(data)
                if sync:
                    file.flush()
                    os.fsync(file.fileno())
            os.replace(staging.path, self.path)
        finally:
            if os.path.exists(staging.path):
                os.remove(staging.path)

    def write_text(self, text: str, sync: bool = True) -> None:
        self.write_bytes(text.encode("utf-8"), sync)

    def write_json(self, value: Any) -> None:
        self.write_text(json.dumps(value, indent=2) + "\n")

    def remove(self) -> None:
        """Delete this file or folder (and everything below it); nothing if absent."""
        info = self._info()
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path)

    def move_to(self, target: Location) -> None:
        """Rename this file or folder to `target` (same filesystem): atomic on a local or
        shared filesystem, a copy and delete on an object store."""
        target.parent.mkdir()
        if self.is_local or self._info().type != pafs.FileType.Directory:
            self.fs.move(self.path, target.path)
            return
        # An object store has no folders to rename (S3's CopyObject refused the prefix):
        # each object is moved on its own, then what is left of the prefix removed.
        selector = pafs.FileSelector(self.path, recursive=True)
        for info in self.fs.get_file_info(selector):
            if info.type == pafs.FileType.File:
                moved = target.path + info.path[len(self.path) :]
                self.fs.create_dir(moved.rsplit("/", 1)[0], recursive=True)
                self.fs.move(info.path, moved)
        self.remove()

    def check_writable_folder(self, flag: str) -> None:
        """A folder this process can create or write into, checked before any work starts:
        one line naming `flag` otherwise. A URI is checked by its first write."""
        if not self.is_local:
            return
        path = self.local_path
        if path.exists() and not path.is_dir():
            raise PosterRayError(f"{flag} {self}: a file is there, not a folder")
        existing = next(parent for parent in (path, *path.parents) if parent.exists())
        if not existing.is_dir():
            raise PosterRayError(f"{flag} {self}: {existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PosterRayError(
                f"{flag} {self}: {existing} is not writable (read-only or not yours); "
                "choose another folder"
            )

    # ------------------------------------------------------------ local copies

    def upload(self, local: str | os.PathLike) -> None:
        """Copy a local file or folder here (replacing what is here); file by file."""
        local = Path(local)
        if local.is_dir():
            self.remove()
            self.mkdir()
            pafs.copy_files(str(local), self.path, destination_filesystem=self.fs)
        else:
            self.write_bytes(local.read_bytes())

    def download(self, local: str | os.PathLike) -> Path:
        """Copy this file or folder to `local`; returns `local`."""
        local = Path(local)
        if self.is_dir():
            local.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(self.path, str(local), source_filesystem=self.fs)
        else:
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(self.read_bytes())
        return local

    @contextmanager
    def local_copy(self) -> Iterator[Path]:
        """A local path holding this file or folder: itself when local, else a temporary
        download (for libraries that only open local files, like Keras)."""
        if self.is_local:
            yield self.local_path
            return
        with tempfile.TemporaryDirectory(prefix="poster-ray-") as scratch:
            yield self.download(Path(scratch) / self.name)

    @contextmanager
    def written_locally(self) -> Iterator[Path]:
        """A local path to write this file or folder to; on success it is committed here
        (renamed into place when local, uploaded otherwise)."""
        parent = self.parent.local_path if self.is_local else None
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{self.name}.", dir=parent) as scratch:
            staged = Path(scratch) / self.name
            yield staged
            if not self.is_local:
                self.upload(staged)
            elif staged.is_dir():
                replace_directory(staged, self.local_path)
            else:
                os.replace(staged, self.local_path)


def replace_directory(new: Path, target: Path) -> None:
    """Move `new` to `target`; an old `target` is moved aside first, then deleted."""
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        target.rename(old / target.name)
        new.rename(target)
        shutil.rmtree(old)
    else:
        new.rename(target)


def read_file_bytes(path: str) -> bytes:
    """The bytes of one file, by local path or URI: what decoding a poster reads."""
    if not is_uri(path):
        with open(path, "rb") as file:
            return file.read()
    return Location(path).read_bytes()
