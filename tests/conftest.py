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

TESTS = Path(__file__).parent
TIERS = ("unit", "integration", "cluster", "browser")
# The files that take longest, longest first, then the rest tier by tier: `make test`
# deals whole files to its two processes in this order (--dist loadfile
# --no-loadscope-reorder), so the cluster module, a third of the suite's time, starts at
# once instead of last, and the short files fill in at the end.
LONGEST_FIRST = (
    "cluster/test_multinode.py",
    "integration/test_train.py",
    "integration/test_transfer.py",
    "integration/test_tune.py",
    "integration/test_infer.py",
    "integration/test_stop.py",
)
TIER_ORDER = ("cluster", "integration", "browser", "unit")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its folder's tier (and `slow` for the longest files), then
    order them longest file first; a unit test that asks for Ray is a mistake that would
    slow the fast tier, so it fails collection."""
    if missing := [name for name in LONGEST_FIRST if not (TESTS / name).is_file()]:
        raise pytest.UsageError(f"tests/conftest.py: LONGEST_FIRST names no such file: {missing}")
    for item in items:
        tier = Path(item.path).parent.name
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in one of tests/{TIERS}")
        if tier == "unit" and "ray_session" in item.fixturenames:
            raise pytest.UsageError(f"{item.nodeid}: a unit test cannot use Ray (ray_session)")
        item.add_marker(tier)
        if file_of(item) in LONGEST_FIRST:
            item.add_marker("slow")
    items.sort(key=dealing_order)  # stable: a file's tests keep their order


def file_of(item: pytest.Item) -> str:
    return f"{Path(item.path).parent.name}/{Path(item.path).name}"


def dealing_order(item: pytest.Item) -> tuple[int, int]:
    if file_of(item) in LONGEST_FIRST:
        return (0, LONGEST_FIRST.index(file_of(item)))
    return (1, TIER_ORDER.index(Path(item.path).parent.name))


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
