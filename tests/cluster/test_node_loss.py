"""A node lost mid-stage, as a spot instance taken back would go, on a loopback cluster.

A head and a second raylet of 1 CPU each. The second node's processes are killed with
SIGKILL (by the ids the harness started, and their children) in the middle of a stage,
then a replacement node joins; the stage must finish as if nothing happened:

- training with 2 workers (one per node) continues from its last checkpoint (Ray
  Train's FailureConfig restarts the worker group once the replacement can hold it),
  its epoch history without gap or repeat;
- bulk inference ends with exactly one row per input, every part committed once (Ray
  Data retries the lost tasks and restarts the lost model actor).

One cluster and one prepared run serve both tests; the run directory is a local path
both nodes see.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from loopback_cluster import BIN_DIR, LoopbackCluster
from paths import REPO
from synthetic import make_dataset

from poster_ray.runtime import PROCESS_ENV

EPOCHS = 6
CHUNK = 16  # inference files per committed part
ARCHIVE = 1600  # posters of the inference test (hard links): 100 parts, for a loss mid-stage
LOST = 1  # the node taken away first; its replacement is taken away next

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        not (BIN_DIR / "ray").exists() or importlib.util.find_spec("aiohttp") is None,
        reason="`ray job submit` and the job server need ray[default] (the `cluster` extra)",
    ),
]


class Submitted(threading.Thread):
    """A `ray job submit` waiting in the background while the test breaks the cluster."""

    def __init__(self, cluster: LoopbackCluster, *argv: str) -> None:
        super().__init__(daemon=True)
        self.cluster, self.argv, self.result = cluster, argv, None

    def run(self) -> None:
        self.result = self.cluster.submit(
            list(self.argv),
            working_dir=str(REPO),
            runtime_env={"env_vars": PROCESS_ENV},
            timeout=780,
        )


def submit(cluster: LoopbackCluster, *argv: str):
    job = Submitted(cluster, *argv)
    job.run()
    assert job.result.status == "SUCCEEDED", job.result.logs[-4000:]
    return job.result


def wait_for(found, what: str, timeout: float = 400.0):
    """Poll `found()` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := found():
            return value
        time.sleep(0.2)
    raise AssertionError(f"no {what} after {timeout:.0f} s")


def lose_and_replace_node(cluster: LoopbackCluster) -> None:
    """Kill every process of the newest worker node, then start a replacement with its
    resources (each test loses the node the one before it added)."""
    newest = max(LOST, len(cluster.node_resources) - 1)
    assert cluster.kill_node(newest), "the node had no process to kill"
    cluster.add_node(cluster.node_resources[newest])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("node-loss")
    with LoopbackCluster(
        log_dir=root / "cluster", num_cpus=1, buckets=(), start_timeout=300
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def prepared(cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("node-loss-run")
    dataset = make_dataset(root / "dataset", n=160)
    run = root / "run"
    submit(cluster, "python", "jobs/prepare.py", "--data", str(dataset), "--out", str(run),
           "--image-size", "32")  # fmt: skip
    return run


def latest_history(run: Path) -> list[dict] | None:
    """The epoch history of the newest checkpoint of the training run, if any."""
    checkpoints = sorted((run / "ray" / "custom_cnn").glob("checkpoint_*/history.json"))
    try:
        return json.loads(checkpoints[-1].read_text()) if checkpoints else None
    except (OSError, json.JSONDecodeError):  # being written
        return None


def history_of_at_least(run: Path, epochs: int) -> list[dict] | None:
    history = latest_history(run)
    return history if history and len(history) >= epochs else None


def test_training_survives_a_lost_node_from_its_last_checkpoint(cluster, prepared):
    job = Submitted(
        cluster, "python", "jobs/train.py", str(prepared), "--model", "custom_cnn",
        "--workers", "2", "--epochs", str(EPOCHS), "--batch-size", "16", "--name", "custom_cnn",
        "--hparams", json.dumps({"filters": [4, 8], "kernel_size": 3, "dense_units": [16]}),
    )  # fmt: skip
    job.start()
    # Two checkpoints on disk: the first was registered by Ray Train before the loss (the
    # newest may be on disk only, and a restart then resumes from the one before).
    before = wait_for(lambda: history_of_at_least(prepared, 2), "second checkpoint")
    lose_and_replace_node(cluster)
    job.join()

    assert job.result.status == "SUCCEEDED", job.result.logs[-4000:]
    assert len(before) < EPOCHS, "training ended before the node was lost"
    history = json.loads((prepared / "models" / "custom_cnn" / "history.json").read_text())
    assert [epoch["epoch"] for epoch in history] == list(range(1, EPOCHS + 1))
    # The epochs before the loss are a checkpoint's own (their timings too): resumed, not
    # trained again from scratch.
    assert history[: len(before) - 1] == before[:-1]
    assert {epoch["workers"] for epoch in history} == {2}


def archive_of(run: Path, n: int) -> Path:
    """A folder of `n` posters, hard links to the run's own: enough parts that the node
    is lost while most are still to do."""
    posters = sorted(pq.read_table(run / "manifest.parquet", columns=["path"]).column(0))
    archive = run.parent / "archive"
    archive.mkdir()
    for i in range(n):
        os.link(posters[i % len(posters)].as_py(), archive / f"tt{i:07d}.jpg")
    return archive


def test_bulk_inference_survives_a_lost_node_with_one_row_per_input(cluster, prepared):
    bundle = prepared / "models" / "custom_cnn" / "bundle"
    if not bundle.is_dir():
        pytest.skip("needs the bundle of the training test")
    archive, output = archive_of(prepared, ARCHIVE), prepared / "predictions"
    infer = (
        "from poster_ray.infer import run_inference; "
        f"run_inference({str(bundle)!r}, {str(archive)!r}, "
        f"{str(output)!r}, workers=2, batch_size=4, chunk_size={CHUNK})"
    )
    job = Submitted(cluster, "python", "-c", infer)
    job.start()
    wait_for(lambda: list(output.glob("part-*.parquet")), "committed part")
    parts_before = len(list(output.glob("part-*.parquet")))
    lose_and_replace_node(cluster)
    job.join()

    assert job.result.status == "SUCCEEDED", job.result.logs[-4000:]
    expected = ARCHIVE // CHUNK
    assert parts_before < expected, "inference ended before the node was lost"
    parts = sorted(output.glob("part-*.parquet"))
    assert [part.name for part in parts] == [f"part-{i:06d}.parquet" for i in range(expected)]
    rows = pq.read_table(parts).column("path").to_pylist()
    inputs = sorted(str(path) for path in archive.iterdir())
    assert len(rows) == len(set(rows)) == ARCHIVE
    assert sorted(rows) == inputs
    assert not list(output.glob("_tmp/*")), "a part left uncommitted"
