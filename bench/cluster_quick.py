"""The quick pipeline as a submitted job on a 2-node loopback cluster, on the real data.

A head and a second raylet on this machine (2 CPUs each, token authentication on) and a
local S3 server (moto), as in tests/cluster/test_multinode.py; `ray job submit --working-dir .`
of `jobs/pipeline.py --profile quick`, first with the run directory on a local absolute
path (both nodes see this machine's disk, as they would a shared mount), then in the
bucket. Records each job's status, wall time (submission to end) and last lines.

    python bench/cluster_quick.py [--data ../shared/datasets/movie-posters]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from loopback_cluster import LoopbackCluster  # noqa: E402

from poster_ray.runtime import PROCESS_ENV  # noqa: E402

BUCKET = "poster-ray"


def submit_quick(cluster: LoopbackCluster, data: Path, out: str) -> dict:
    started = time.perf_counter()
    result = cluster.submit(
        ["python", "jobs/pipeline.py", "--profile", "quick", "--data", str(data), "--out", out],
        working_dir=str(REPO),
        runtime_env={"env_vars": PROCESS_ENV},
        timeout=3600,
    )
    lines = result.logs.splitlines()
    done = next((i for i, line in enumerate(lines) if line.startswith("== done")), len(lines))
    return {
        "run_dir": out,
        "status": result.status,
        "wall_s": round(time.perf_counter() - started, 1),
        "last_lines": lines[done : done + 8] if result.status == "SUCCEEDED" else lines[-40:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared/datasets/movie-posters"))
    parser.add_argument("--out", default=str(REPO / "bench/results/cluster_quick.json"))
    args = parser.parse_args()
    data = Path(args.data).resolve()
    results = {
        "command": "python bench/cluster_quick.py",
        "nodes": "2 x 2 CPUs on one 2-core machine",
    }
    with (
        tempfile.TemporaryDirectory(prefix="cluster-quick-") as scratch,
        LoopbackCluster(
            log_dir=Path(scratch, "cluster"), num_cpus=2, object_store_mb=1024
        ) as cluster,
    ):
        for where, out in (
            ("local_absolute", str(Path(scratch, "run"))),
            ("s3", cluster.s3_uri(BUCKET, "quick")),
        ):
            results[where] = submit_quick(cluster, data, out)
            print(json.dumps({where: results[where]}, indent=2), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
