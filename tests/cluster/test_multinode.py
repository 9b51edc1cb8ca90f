"""The main command end to end, as a submitted job on a 2-node Ray cluster with S3.

The tiny profile runs every stage (prepare, train the CNN and the pretrained model,
evaluate, tune, compare, predict the samples, bulk inference). A head and a second
raylet on loopback, 1 CPU each (small nodes: every stage's plan must fit beside its own
tasks, or the pipeline waits forever), token authentication on, a local S3 server: the
dataset and the run directory (checkpoints, caches, bundles, predictions) live in the
bucket, the job goes through `ray job submit` as the README says, and the same job
submitted again reuses every model and adds no prediction.
"""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from loopback_cluster import BIN_DIR, LoopbackCluster, auth_rejected
from paths import REPO
from synthetic import make_dataset, make_poster

from poster_ray.runtime import PROCESS_ENV

BUCKET = "poster-ray"

pytestmark = [
    # Two submissions of the pipeline on 1-CPU nodes, beside the rest of the suite.
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


def submit(cluster: LoopbackCluster, *argv: str):
    """`ray job submit --working-dir . --runtime-env-json ... -- python jobs/...`."""
    result = cluster.submit(
        ["python", *argv],
        working_dir=str(REPO),
        runtime_env={"env_vars": PROCESS_ENV},
        timeout=1500,
    )
    assert result.status == "SUCCEEDED", result.logs[-4000:]
    return result


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    dataset = make_dataset(root / "dataset", n=160)
    (dataset / "samples").mkdir()
    make_poster(dataset / "samples" / "red.jpg", color=(220, 30, 30))
    (dataset / "samples" / "broken.jpg").write_bytes(b"not a poster")
    with LoopbackCluster(
        log_dir=root / "cluster", num_cpus=1, buckets=(BUCKET,), start_timeout=300
    ) as cluster:
        token_auth = (
            cluster.api("GET", "/api/authentication_mode", auth=False),
            auth_rejected(cluster),
        )
        data = upload(cluster, dataset, "dataset")
        run = cluster.s3_uri(BUCKET, "run")
        pipeline = ("jobs/pipeline.py", "--profile", "tiny", "--data", data, "--out", run)
        job = submit(cluster, *pipeline)
        before = keys(cluster, "run/")
        rerun = submit(cluster, *pipeline)  # a resubmission of the finished pipeline
        parts = sorted(key for key in before if key.startswith("run/predictions/part-"))
        yield {
            "job": job,
            "rerun": rerun,
            "before": before,
            "after": keys(cluster, "run/"),
            "token_auth": token_auth,
            "history": json.loads(read_object(cluster, "run/models/custom_cnn/history.json")),
            "manifest": read_parquet(cluster, ["run/manifest.parquet"]),
            "predictions": read_parquet(cluster, parts),
        }
    # Teardown stopped exactly what the cluster started.
    assert cluster.leftovers == [] and not any(record.alive() for record in cluster.processes)


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
