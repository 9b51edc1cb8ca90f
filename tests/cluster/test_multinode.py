"""Submitted jobs on a 2-node Ray cluster with S3: the main command end to end, then
stages that lose a node.

One cluster serves the module (a second one beside it would share these 2 cores).

The tiny profile, with one tuning trial, runs every stage (prepare, train the CNN and
the pretrained model, evaluate, tune, compare, predict the samples, bulk inference),
on a head and a second raylet on loopback, 1 CPU each (small nodes: every stage's plan
must fit beside its own tasks, or the pipeline waits forever), token authentication on,
a local S3 server: the dataset and the run directory (checkpoints, caches, bundles,
predictions) live in the bucket, the job goes through `ray job submit` as the README
says, and the same job submitted again reuses every model and adds no prediction.

Then a node is lost mid-stage, as a spot instance taken back would go: the second
node's processes are killed with SIGKILL (by the ids the harness started, and their
children), then a replacement node joins, and the stage must finish as if nothing
happened:

- training with 2 workers (one per node) continues from its last checkpoint (Ray
  Train's FailureConfig restarts the worker group once the replacement can hold it),
  its epoch history without gap or repeat;
- bulk inference ends with exactly one row per input, every part committed once (Ray
  Data retries the lost tasks and restarts the lost model actor).

The node-loss run directory is a local path both nodes see.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from loopback_cluster import BIN_DIR, LoopbackCluster, auth_rejected
from paths import REPO
from synthetic import make_dataset, make_poster

from poster_ray.runtime import PROCESS_ENV

BUCKET = "poster-ray"
# The node-loss tests: training epochs (of 0.6 s at 64 px on an Intel host, about 2 s on
# a slower AMD one: 6 epochs ended before the loss on the first), the wait for Ray
# Train's controller to have registered a checkpoint (a few of its polls of the workers'
# reports), inference files per committed part, posters to infer (hard links: 100 parts,
# so the node is lost while most are still to do).
EPOCHS = 12
REGISTERED_AFTER_S = 4 * float(PROCESS_ENV["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"])
CHUNK = 16
ARCHIVE = 1600

pytestmark = [
    # Two submissions of the pipeline on 1-CPU nodes, then the node losses, beside the
    # rest of the suite.
    pytest.mark.timeout(2400),
    pytest.mark.skipif(
        not (BIN_DIR / "ray").exists() or importlib.util.find_spec("aiohttp") is None,
        reason="`ray job submit` and the job server need ray[default] (the `cluster` extra)",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("moto") is None, reason="the local S3 server needs moto[server]"
    ),
]


def upload(cluster: LoopbackCluster, folder: Path, prefix: str) -> str:
    """Every file below `folder` into the bucket under `prefix`; returns its URI."""
    client = cluster.s3_client()
    for path in folder.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder)}")
    return cluster.s3_uri(BUCKET, prefix)


def keys(cluster: LoopbackCluster, prefix: str) -> dict[str, str]:
    """Object keys below `prefix`, with their ETags."""
    pages = cluster.s3_client().get_paginator("list_objects_v2")
    return {
        item["Key"]: item["ETag"]
        for page in pages.paginate(Bucket=BUCKET, Prefix=prefix)
        for item in page.get("Contents", [])
    }


def read_object(cluster: LoopbackCluster, key: str) -> bytes:
    return cluster.s3_client().get_object(Bucket=BUCKET, Key=key)["Body"].read()


def read_parquet(cluster: LoopbackCluster, keys: list[str]):
    """Parquet objects as one pandas frame."""
    import pandas as pd

    return pd.concat(
        [pq.read_table(io.BytesIO(read_object(cluster, key))).to_pandas() for key in keys]
    )


class Submitted(threading.Thread):
    """`ray job submit --working-dir . --runtime-env-json ... -- ARGV`, waiting in the
    background (while a test breaks the cluster, say)."""

    def __init__(self, cluster: LoopbackCluster, *argv: str) -> None:
        super().__init__(daemon=True)
        self.cluster, self.argv, self.result = cluster, argv, None

    def run(self) -> None:
        self.result = self.cluster.submit(
            list(self.argv),
            working_dir=str(REPO),
            runtime_env={"env_vars": PROCESS_ENV},
            timeout=1500,
        )


def submit(cluster: LoopbackCluster, *argv: str):
    """A submitted job, to its end; it must succeed."""
    job = Submitted(cluster, *argv)
    job.run()
    assert job.result.status == "SUCCEEDED", job.result.logs[-4000:]
    return job.result


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LoopbackCluster(
        log_dir=tmp_path_factory.mktemp("cluster"), num_cpus=1, buckets=(BUCKET,), start_timeout=300
    ) as cluster:
        yield cluster
    # Teardown stopped exactly what the cluster started.
    assert cluster.leftovers == [] and not any(record.alive() for record in cluster.processes)


@pytest.fixture(scope="module")
def cluster_run(cluster, tmp_path_factory):
    dataset = make_dataset(tmp_path_factory.mktemp("multinode") / "dataset", n=160)
    (dataset / "samples").mkdir()
    make_poster(dataset / "samples" / "red.jpg", color=(220, 30, 30))
    (dataset / "samples" / "broken.jpg").write_bytes(b"not a poster")
    token_auth = (
        cluster.api("GET", "/api/authentication_mode", auth=False),
        auth_rejected(cluster),
    )
    data = upload(cluster, dataset, "dataset")
    run = cluster.s3_uri(BUCKET, "run")
    # One trial: the search itself (ASHA, resuming) is tested on a local Ray; here, that
    # a trial's training runs on the cluster and becomes the tuned model.
    pipeline = ("python", "jobs/pipeline.py", "--profile", "tiny", "--trials", "1")
    pipeline += ("--data", data, "--out", run)
    job = submit(cluster, *pipeline)
    before = keys(cluster, "run/")
    rerun = submit(cluster, *pipeline)  # a resubmission of the finished pipeline
    parts = sorted(key for key in before if key.startswith("run/predictions/part-"))
    return {
        "job": job,
        "rerun": rerun,
        "before": before,
        "after": keys(cluster, "run/"),
        "token_auth": token_auth,
        "history": json.loads(read_object(cluster, "run/models/custom_cnn/history.json")),
        "manifest": read_parquet(cluster, ["run/manifest.parquet"]),
        "predictions": read_parquet(cluster, parts),
    }


def test_the_cluster_requires_its_token(cluster_run):
    assert cluster_run["token_auth"] == ({"authentication_mode": "token"}, 401)


def test_every_stage_leaves_its_output_in_the_bucket(cluster_run):
    stored = cluster_run["before"]
    assert any(key.startswith("run/ray/custom_cnn/checkpoint_") for key in stored)
    assert any(key.startswith("run/features/efficientnet_lite0-64px/") for key in stored)
    for name in ("custom_cnn", "efficientnet_lite0", "tuned_efficientnet_lite0"):
        for output in ("model.keras", "report.md", "metrics.json", "bundle/bundle.json"):
            assert f"run/models/{name}/{output}" in stored, (name, output)
    for key in (
        "run/manifest.parquet",
        "run/models/tuned_efficientnet_lite0/trials.csv",
        "run/comparison.md",
        "run/predictions/_summary.json",
    ):
        assert key in stored, key
    logs = cluster_run["job"].logs
    assert "poster-ray: error" not in logs
    for name in ("custom_cnn", "efficientnet_lite0", "tuned_efficientnet_lite0"):
        assert f"{name}: micro-F1" in logs


def test_samples_are_predicted_and_a_broken_one_is_an_error_line(cluster_run):
    lines = cluster_run["job"].logs.splitlines()
    assert any("red.jpg: " in line and "error" not in line for line in lines)
    assert any("broken.jpg: error: " in line for line in lines)


def test_bulk_inference_writes_one_row_per_prepared_poster(cluster_run):
    predictions, manifest = cluster_run["predictions"], cluster_run["manifest"]
    assert sorted(predictions["path"]) == sorted(manifest["path"])
    assert predictions["path"].str.startswith("s3://").all()
    assert (predictions["status"] == "ok").all()


def test_training_workers_ran_on_both_nodes(cluster_run):
    """One worker per node by default: two workers, rank 0 alone on its node."""
    assert "training custom_cnn as 'custom_cnn': 2 worker(s)" in cluster_run["job"].logs
    last = cluster_run["history"][-1]
    assert (last["workers"], last["workers_on_node"]) == (2, 1)


def test_a_resubmitted_pipeline_reuses_its_models_and_adds_no_row(cluster_run):
    logs = cluster_run["rerun"].logs
    for name in ("custom_cnn", "efficientnet_lite0", "tuned_efficientnet_lite0"):
        assert f"reusing model {name!r}" in logs
    assert "0 to run" in logs
    kept = {
        key
        for key in cluster_run["before"]
        if key.startswith("run/predictions/part-") or "/bundle/" in key
    }
    assert any("/bundle/" in key for key in kept)
    assert {key: cluster_run["after"][key] for key in kept} == {
        key: cluster_run["before"][key] for key in kept
    }


# Node loss: after the pipeline's tests, on the same cluster.


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
    newest = len(cluster.node_resources) - 1
    assert cluster.kill_node(newest), "the node had no process to kill"
    cluster.add_node(cluster.node_resources[newest])


@pytest.fixture(scope="module")
def prepared(cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("node-loss-run")
    dataset = make_dataset(root / "dataset", n=160)
    run = root / "run"
    submit(cluster, "python", "jobs/prepare.py", "--data", str(dataset), "--out", str(run),
           "--image-size", "64")  # fmt: skip
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
    # Ray Train's controller takes in the workers' reports (and so their checkpoints) at
    # its health checks: the loss comes a few of them after the first checkpoint, so that
    # one at least is the run's own, and with two on disk.
    wait_for(lambda: history_of_at_least(prepared, 1), "first checkpoint")
    time.sleep(REGISTERED_AFTER_S)
    before = wait_for(lambda: history_of_at_least(prepared, 2), "second checkpoint")
    lose_and_replace_node(cluster)
    job.join()

    assert job.result.status == "SUCCEEDED", job.result.logs[-4000:]
    assert len(before) < EPOCHS, "training ended before the node was lost"
    history = json.loads((prepared / "models" / "custom_cnn" / "history.json").read_text())
    assert [epoch["epoch"] for epoch in history] == list(range(1, EPOCHS + 1))
    # Resumed from a checkpoint taken before the loss, not trained again from scratch:
    # the epochs up to it are that checkpoint's own (their timings too).
    resumed = re.search(r"resuming after epoch (\d+)/", job.result.logs)
    assert resumed, job.result.logs[-4000:]
    kept = int(resumed.group(1))
    assert 1 <= kept <= len(before) and history[:kept] == before[:kept]
    assert {epoch["workers"] for epoch in history} == {2}


def archive_of(run: Path, n: int) -> Path:
    """A folder of `n` posters, hard links to the run's own: enough parts that the node
    is lost while most are still to do."""
    posters = sorted(pq.read_table(run / "manifest.parquet", columns=["path"])["path"].to_pylist())
    archive = run.parent / "archive"
    archive.mkdir()
    for i in range(n):
        os.link(posters[i % len(posters)], archive / f"tt{i:07d}.jpg")
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
