"""Feature extraction with a node lost mid-stage, against the same features without it.

A loopback cluster of two 1-CPU nodes (tests/loopback_cluster.py). One prepared run;
EfficientNet-Lite0's features computed by a submitted job, once undisturbed and once
with the second node's processes killed (SIGKILL) as soon as the job says it computes
features, a replacement node joining at once. Records both wall times and whether the
faulted run's features are complete and equal to the undisturbed ones, per poster id.

    python bench/node_loss_features.py [--data ../shared/datasets/movie-posters] [--limit 400]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from loopback_cluster import LoopbackCluster  # noqa: E402

from poster_ray.data.tables import read_table  # noqa: E402
from poster_ray.runtime import PROCESS_ENV  # noqa: E402
from poster_ray.storage import Location  # noqa: E402

BACKBONE, SIZE = "efficientnet_lite0", 64


def submit(cluster: LoopbackCluster, sid: str, *argv: str) -> dict:
    started = time.perf_counter()
    result = cluster.submit(
        list(argv),
        working_dir=str(REPO),
        runtime_env={"env_vars": PROCESS_ENV},
        submission_id=sid,
        timeout=3600,
    )
    if result.status != "SUCCEEDED":
        raise SystemExit(f"{sid} {result.status}:\n{result.logs[-4000:]}")
    return {"wall_s": round(time.perf_counter() - started, 1), "logs": result.logs}


def extract(cluster: LoopbackCluster, run: Path, sid: str, lose_node: bool) -> dict:
    """Compute the run's features in a job; with `lose_node`, kill node 1 mid-stage."""
    code = (
        "from poster_ray.features import ensure_features; from poster_ray.layout import RunDir; "
        "from poster_ray.runtime import init_ray; init_ray(); "
        f"ensure_features(RunDir({str(run)!r}), {BACKBONE!r}, {SIZE})"
    )
    outcome: dict = {}
    job = threading.Thread(
        target=lambda: outcome.update(submit(cluster, sid, "python", "-c", code))
    )
    job.start()
    killed_at = None
    if lose_node:
        started = time.perf_counter()
        while "Computing" not in cluster.job_logs(sid):
            time.sleep(0.2)
        killed = cluster.kill_node(1)
        killed_at = round(time.perf_counter() - started, 1)
        cluster.add_node(cluster.node_resources[1])
        outcome["killed_processes"] = len(killed)
    job.join()
    outcome.pop("logs", None)
    return {**outcome, "killed_at_s": killed_at}


def features_by_id(run: Path) -> dict[str, np.ndarray]:
    location = Location.of(run / "features" / f"{BACKBONE}-{SIZE}px")
    frame = read_table(location, ["id", "features"])
    pairs = zip(frame["id"], frame["features"], strict=True)
    return {poster: np.frombuffer(blob, dtype="float32") for poster, blob in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared/datasets/movie-posters"))
    parser.add_argument("--limit", type=int, default=400)
    parser.add_argument("--out", default=str(REPO / "bench/results/node_loss_features.json"))
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="node-loss-") as scratch,
        LoopbackCluster(num_cpus=1, buckets=(), start_timeout=300) as cluster,
    ):
        run = Path(scratch) / "run"
        submit(cluster, "prepare", "python", "jobs/prepare.py", "--data", args.data,
               "--out", str(run), "--limit", str(args.limit), "--image-size", "64")  # fmt: skip
        clean = extract(cluster, run, "features-clean", lose_node=False)
        expected = features_by_id(run)
        shutil.rmtree(run / "features")
        faulted = extract(cluster, run, "features-node-lost", lose_node=True)
        got = features_by_id(run)
    same_ids = sorted(got) == sorted(expected)
    max_diff = (
        max(float(np.abs(got[i] - expected[i]).max()) for i in expected) if same_ids else None
    )
    results = {
        "command": "python bench/node_loss_features.py",
        "nodes": "2 x 1 CPU on one 2-core machine",
        "posters": len(expected),
        "undisturbed": clean,
        "node_lost": faulted,
        "rows": len(got),
        "same_ids": same_ids,
        "max_abs_difference": max_diff,
    }
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
