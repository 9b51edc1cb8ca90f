"""Shared fixtures: one local Ray for the whole session, and synthetic datasets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Tests import their helpers as `from synthetic import ...`.
sys.path.insert(0, str(Path(__file__).parent))

from synthetic import make_dataset  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    """Start a 2-CPU local Ray without progress bars once; CLI calls reuse it (init_ray
    is idempotent)."""
    import ray

    from poster_ray.runtime import init_ray

    init_ray(num_cpus=2, progress_bars=False)
    yield
    ray.shutdown()


@pytest.fixture
def synthetic_dataset(tmp_path: Path) -> Path:
    """A clean 40-poster dataset (no dirty rows) in tmp_path."""
    return make_dataset(tmp_path / "dataset", n=40)
