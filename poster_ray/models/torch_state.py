"""Read a PyTorch state-dict file into numpy arrays, without torch and without running code.

A ``.pth`` file is a pickle, and unpickling can call any importable function, so a
weights file would be as dangerous as a script. The unpickler here resolves only the few
names a tensor state dict needs (an OrderedDict, the tensor rebuild function and the
storage types) and refuses everything else before it could be called. Both layouts
``torch.save`` has written are read: the zip archive (torch >= 1.6) and the legacy one,
where the raw storages follow the pickle.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from poster_ray.errors import PosterRayError

# The first pickle of a legacy file, and the version its second pickle must hold.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_VERSION = 1001

_STORAGE_DTYPES = {
    "DoubleStorage": "<f8",
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "<i1",
    "ByteStorage": "<u1",
    "BoolStorage": "?",
}

# What malformed input makes pickle, zipfile or the checks below raise.
_MALFORMED = (
    pickle.UnpicklingError,
    EOFError,
    AttributeError,
    ImportError,
    IndexError,
    KeyError,
    TypeError,
    ValueError,
    struct.error,
    zipfile.BadZipFile,
)


@dataclass(frozen=True)
class _StorageType:
    """What ``torch.FloatStorage`` & co. resolve to: just the element type."""

    dtype: np.dtype


@dataclass(frozen=True)
class _StorageRef:
    """A storage named in the pickle; legacy files only store its bytes after the pickle."""

    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    """A strided view of a storage, materialised once every storage has been read."""

    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_rest) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``; requires_grad and hooks are moot."""
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("a tensor whose storage is not a plain storage")
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *_rest) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_parameter``: a Parameter is its tensor."""
    if not isinstance(data, _TensorRef):
        raise pickle.UnpicklingError("a parameter that does not wrap a tensor")
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(np.dtype(code)) for name, code in _STORAGE_DTYPES.items()},
}


class _StateDictUnpickler(pickle.Unpickler):
    """Resolves only the names of ``_ALLOWED``; storages become references to read later."""

    def __init__(self, file: io.BytesIO, legacy: bool) -> None:
        super().__init__(file)
        self._legacy = legacy

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing {module}.{name}: a tensor state dict never needs it"
            ) from None

    def persistent_load(self, pid) -> _StorageRef:
        """Turn a storage's persistent id into a reference, checking its form.

        Zip files write ('storage', type, key, location, numel); legacy files add the
        view a storage may be of, (view key, offset, size), which tensors never use here.
        """
        fields = 6 if self._legacy else 5
        if not (isinstance(pid, tuple) and len(pid) == fields and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unexpected storage type {storage_type!r:.80}")
        if self._legacy and pid[5] is not None:
            raise pickle.UnpicklingError(
                "storage views (written by very old torch versions) are not supported"
            )
        return _StorageRef(str(key), storage_type.dtype, int(numel))


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of the state dict saved at ``path``, as numpy arrays by name.

    Raises PosterRayError, naming the file, for anything that is not a plain tensor state
    dict, including pickles that reference any other code.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise PosterRayError(f"Cannot read PyTorch weights {path}: {err.strerror}") from err
    try:
        if zipfile.is_zipfile(io.BytesIO(data)):
            state, storages = _read_zip(data)
        else:
            state, storages = _read_legacy(data)
        return _materialise(state, storages)
    except _MALFORMED as err:
        problem = " ".join(str(err).split()) or type(err).__name__
        raise PosterRayError(f"Cannot read PyTorch weights {path}: {problem}") from err


def _read_zip(data: bytes) -> tuple[object, dict[str, np.ndarray]]:
    """A zip-format file: ``<dir>/data.pkl`` plus one ``<dir>/data/<key>`` per storage."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError("a zip file without exactly one data.pkl: not a torch.save file")
        root = pickles[0].removesuffix("data.pkl")
        if f"{root}byteorder" in archive.namelist():
            byteorder = archive.read(f"{root}byteorder").decode()
            if byteorder != "little":
                raise ValueError(f"{byteorder}-endian files are not supported")
        unpickler = _StateDictUnpickler(io.BytesIO(archive.read(pickles[0])), legacy=False)
        state = unpickler.load()
        storages = {
            ref.key: _storage_array(archive.read(f"{root}data/{ref.key}"), ref)
            for ref in _storage_refs(state)
        }
    return state, storages


def _read_legacy(data: bytes) -> tuple[object, dict[str, np.ndarray]]:
    """A legacy file: magic, version, system info, the state dict and its storage keys
    (five pickles), then each storage as an int64 element count and its raw bytes."""
    stream = io.BytesIO(data)
    if _StateDictUnpickler(stream, legacy=True).load() != _LEGACY_MAGIC:
        raise ValueError("not a PyTorch file (neither a zip archive nor the legacy magic number)")
    version = _StateDictUnpickler(stream, legacy=True).load()
    if version != _LEGACY_VERSION:
        raise ValueError(f"unsupported legacy format version {version!r:.40}")
    sys_info = _StateDictUnpickler(stream, legacy=True).load()
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian")):
        raise ValueError("big-endian files are not supported")
    state = _StateDictUnpickler(stream, legacy=True).load()
    keys = _StateDictUnpickler(stream, legacy=True).load()
    refs = {ref.key: ref for ref in _storage_refs(state)}
    storages = {}
    for key in keys:
        (numel,) = struct.unpack("<q", stream.read(8))
        ref = refs.get(str(key))
        if ref is None or numel != ref.numel:
            raise ValueError(f"storage {key!r:.40} does not match the tensors that use it")
        storages[ref.key] = _storage_array(stream.read(numel * ref.dtype.itemsize), ref)
    return state, storages


def _storage_refs(state: object) -> list[_StorageRef]:
    """The distinct storages a state dict's tensors point into."""
    if not isinstance(state, dict):
        raise ValueError(f"the file holds a {type(state).__name__}, not a state dict")
    refs = {}
    for name, tensor in state.items():
        if not (isinstance(name, str) and isinstance(tensor, _TensorRef)):
            raise ValueError(f"entry {name!r:.80} is not a tensor")
        refs[tensor.storage.key] = tensor.storage
    return list(refs.values())


def _storage_array(raw: bytes, ref: _StorageRef) -> np.ndarray:
    """A storage's bytes as a flat array, checked against its declared element count."""
    if len(raw) != ref.numel * ref.dtype.itemsize:
        raise ValueError(f"storage {ref.key} is truncated ({len(raw)} bytes)")
    return np.frombuffer(raw, dtype=ref.dtype)


def _materialise(state: dict, storages: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each tensor as its own C-contiguous array in native byte order."""
    return {name: _tensor_array(tensor, storages, name) for name, tensor in state.items()}


def _tensor_array(tensor: _TensorRef, storages: dict[str, np.ndarray], name: str) -> np.ndarray:
    """Apply a tensor's offset, shape and strides (in elements) to its storage.

    Bounds are checked first, for a message that names the tensor.
    """
    storage = storages.get(tensor.storage.key)
    if storage is None:
        raise ValueError(f"the data of tensor {name} is missing")
    shape, strides, offset = tensor.shape, tensor.strides, tensor.offset
    if len(shape) != len(strides) or min((offset, *shape, *strides)) < 0:
        raise ValueError(f"tensor {name} has an invalid layout")
    if 0 in shape:
        return np.zeros(shape, dtype=storage.dtype.newbyteorder("="))
    last = offset + sum((size - 1) * stride for size, stride in zip(shape, strides, strict=True))
    if last >= storage.size:
        raise ValueError(f"tensor {name} reaches past the end of its storage")
    view = np.ndarray(
        shape,
        storage.dtype,
        buffer=storage,
        offset=offset * storage.itemsize,
        strides=[stride * storage.itemsize for stride in strides],
    )
    # A copy (not ascontiguousarray, which turns 0-d tensors into 1-d ones).
    return np.array(view, dtype=storage.dtype.newbyteorder("="), order="C")
