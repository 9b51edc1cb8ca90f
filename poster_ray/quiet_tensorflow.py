"""TensorFlow's start-up, quiet but never silent about a failure.

TensorFlow's own switch, TF_CPP_MIN_LOG_LEVEL=3, silences its C++ INFO, WARNING and
ERROR lines once its logging is set up. It cannot reach what its libraries print while
they load, before absl's logging is initialised: measured on a CPU machine with TF 2.21,
each process's `import tensorflow` still printed four lines (twice "WARNING: All log
messages before absl::InitializeLog() is called are written to STDERR" and "Could not
find cuda drivers on your machine, GPU will not be used."). `start_up_noise_dropped`
drops those lines, and only those: whatever else the import writes (a CUDA library that
fails to load, a crash) reaches the console as written, and Python errors raise.

`tf_import` imports TensorFlow through it in every process that imports it from us;
`install_filtered_tensorflow_import` routes a worker's first `import tensorflow`,
whoever makes it (Ray Train imports it before our code runs), through it too.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

# Read by TensorFlow once, at its first import.
TENSORFLOW_ENV = {
    # Ray Train runs Keras under MultiWorkerMirroredStrategy, which only tf-keras (Keras
    # 2) supports; Ray sets this on Train workers, and the driver and other workers must
    # agree to load the same models.
    "TF_USE_LEGACY_KERAS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "3",  # not even "failed call to cuInit" on CPU machines
}
# Lines absl writes before its logging is initialised, whatever TF_CPP_MIN_LOG_LEVEL
# says: abseil/abseil-cpp#1718 and #1957 (messages below the threshold are written when
# not initialised), tensorflow/tensorflow#102212 (TensorFlow logs before InitializeLog).
START_UP_NOISE = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"] Could not find cuda drivers on your machine, GPU will not be used.",
    # On Intel CPUs (field notes); not seen on this AMD machine.
    b"] oneDNN custom operations are on.",
)


def is_start_up_noise(line: bytes) -> bool:
    return any(noise in line for noise in START_UP_NOISE)


@contextmanager
def start_up_noise_dropped() -> Iterator[None]:
    """Collect what is written to file descriptor 2 (where C++ writes) while the block
    runs, then write it back without the START_UP_NOISE lines, also when it raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().splitlines(keepends=True)
            os.write(2, b"".join(line for line in lines if not is_start_up_noise(line)))


def quiet_tensorflow_logger(tensorflow: ModuleType) -> None:
    """TensorFlow's Python logger at ERROR: collective all-reduce and retracing notes."""
    tensorflow.get_logger().setLevel("ERROR")


class _FilteredLoader(importlib.abc.Loader):
    """TensorFlow's own loader, run with its start-up noise dropped."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with start_up_noise_dropped():
            self.loader.exec_module(module)
        quiet_tensorflow_logger(module)

    def __getattr__(self, name: str):
        return getattr(self.loader, name)


class _FilteredTensorflowFinder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as usual, and hands it the filtered loader."""

    def find_spec(self, fullname: str, path, target=None):
        if fullname != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteredLoader(spec.loader)
        return spec


def install_filtered_tensorflow_import() -> None:
    """Route this worker's first `import tensorflow` through `start_up_noise_dropped`
    (a no-op once TensorFlow is imported). For Ray workers only: the runtime_env's
    worker_process_setup_hook runs it, never `import poster_ray`."""
    if "tensorflow" in sys.modules:
        return
    if not any(isinstance(finder, _FilteredTensorflowFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _FilteredTensorflowFinder())
