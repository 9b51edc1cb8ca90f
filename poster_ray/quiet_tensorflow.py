"""A quiet first `import tensorflow`, in every process of ours.

TensorFlow's C++ libraries print start-up lines (oneDNN, CUDA probing, an absl notice)
as they load, before any log setting applies, in every process that imports them: a
short pipeline printed dozens. `install_quiet_import` makes the first `import
tensorflow` of a process, whoever makes it (Ray itself imports it in Train's
controller and workers), run with those lines discarded; Python errors still raise.
`poster_ray/__init__` installs it in the driver, and `runtime.init_ray` in every Ray
worker process, through the runtime_env's worker_process_setup_hook.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType


@contextmanager
def stderr_discarded() -> Iterator[None]:
    """Point file descriptor 2 (what C++ writes to) at /dev/null for a moment."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _QuietLoader(importlib.abc.Loader):
    """TensorFlow's own loader, run with C++ start-up lines discarded."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with stderr_discarded():
            self.loader.exec_module(module)
        module.get_logger().setLevel("ERROR")  # collective all-reduce and retracing notes

    def __getattr__(self, name: str):
        return getattr(self.loader, name)


class _QuietTensorflowFinder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as usual, and hands it a quiet loader."""

    def find_spec(self, fullname: str, path, target=None):
        if fullname != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def install_quiet_import() -> None:
    """Make this process's first `import tensorflow` quiet (a no-op once it is imported)."""
    if "tensorflow" in sys.modules:
        return
    if not any(isinstance(finder, _QuietTensorflowFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorflowFinder())
