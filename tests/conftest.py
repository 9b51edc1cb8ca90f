"""Shared fixtures (one local Ray for the whole session, synthetic datasets) and the tiers.

A test's tier is its folder: `unit` (no Ray; seconds), `integration` (the session's local
Ray, tiny synthetic data), `cluster` (the 2-node loopback cluster, the S3 server),
`browser` (pages opened from disk in headless Chromium; skipped without one). Each test
gets its folder's marker, so `pytest -m unit` is the inner loop (`make test-fast`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Tests import their helpers as `from synthetic import ...`.
sys.path.insert(0, str(Path(__file__).parent))

from synthetic import DIRTY, DIRTY_GOOD_POSTERS, DIRTY_IMAGE_SIZE, make_dataset  # noqa: E402

TIERS = ("unit", "integration", "cluster", "browser")
# The files that take most of the suite's time (seconds of test time on a fresh clone, 2
# cores: 371, 368, 198, 109 of 1,317); their tests are marked `slow`, so that
# `-m "integration and not slow"` is a quick second loop. Starting them first on both
# workers (--no-loadscope-reorder) gave the same wall time, 671 s against 678 s: the suite
# is bound by the 2 cores, not by the order.
SLOW_FILES = (
    "cluster/test_multinode.py",
    "integration/test_transfer.py",
    "integration/test_train.py",
    "integration/test_tune.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its folder's tier (and `slow`); a unit test that asks for Ray
    is a mistake that would slow the fast tier, so it fails collection."""
    for item in items:
        path = Path(item.path)
        tier = path.parent.name
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in one of tests/{TIERS}")
        if tier == "unit" and "ray_session" in item.fixturenames:
            raise pytest.UsageError(f"{item.nodeid}: a unit test cannot use Ray (ray_session)")
        item.add_marker(tier)
        if f"{tier}/{path.name}" in SLOW_FILES:
            item.add_marker("slow")


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


@pytest.fixture(scope="session")
def dirty_run(ray_session, tmp_path_factory):
    """(dataset root, RunDir, summary) of one prepare run on a dataset with every kind of
    dirt, shared by the data stage's tests: prepare is their slow part."""
    from poster_ray.config import PreprocessSpec
    from poster_ray.data.prepare import prepare
    from poster_ray.layout import RunDir

    root = make_dataset(tmp_path_factory.mktemp("dirty"), n=DIRTY_GOOD_POSTERS, **DIRTY)
    run = RunDir(tmp_path_factory.mktemp("run"))
    summary = prepare(root, run, PreprocessSpec(DIRTY_IMAGE_SIZE), seed=3)
    return root, run, summary
