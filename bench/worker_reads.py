"""Rows and bytes each training worker reads of the training split, for 1, 2 and 4 workers.

On a 2-node loopback cluster (2 CPUs per node, as in tests/cluster), a submitted job
prepares a synthetic run and trains the CNN for one epoch with each worker count, every
worker copying its share into memory. Each worker reports what it copied (rows and
bytes); a Ray Train callback collects every worker's report. The split is read from the
cache once per run and divided among the workers, so each of N workers should read
about 1/N of the rows.

    python bench/worker_reads.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from loopback_cluster import LoopbackCluster  # noqa: E402

from poster_ray.runtime import PROCESS_ENV  # noqa: E402

WORKER_COUNTS = (1, 2, 4)
POSTERS = 800


def measure(out: Path) -> None:
    """Inside the job: one epoch per worker count; every worker's reads into `out`."""
    import ray
    import ray.train
    from synthetic import prepared_run

    from poster_ray import train, trainer
    from poster_ray.config import TrainConfig
    from poster_ray.data.cache import read_split_arrays
    from poster_ray.runtime import init_ray

    class WorkerReads(ray.train.UserCallback):
        """Each worker's first report of what it read (runs in the Train controller)."""

        def __init__(self, path: str) -> None:
            self.path = path

        def after_report(self, run_context, metrics, checkpoint) -> None:
            reads = [{key: m.get(key) for key in ("rows_read", "bytes_read")} for m in metrics]
            Path(self.path).write_text(json.dumps(reads))

    init_ray(None, progress_bars=False)
    with tempfile.TemporaryDirectory(prefix="worker-reads-", dir=out.parent) as scratch:
        run = prepared_run(Path(scratch), n=POSTERS, image_size=32)
        split_rows = len(read_split_arrays(run, "train")[0])
        base = TrainConfig(
            epochs=1,
            batch_size=16,
            in_memory=True,
            hparams={"filters": [4, 8], "kernel_size": 3, "dense_units": [16]},
        )
        results = {"train_split_rows": split_rows, "runs": {}}
        for workers in WORKER_COUNTS:
            config = train.place_workers(replace(base, workers=workers))
            data = train.load_training_data(run, config)
            reads = Path(scratch) / f"reads-{workers}.json"
            train_run = trainer.make_trainer(
                data, config, f"reads-{workers}", run.ray_storage, [WorkerReads(str(reads))]
            )
            train_run.fit()
            per_worker = json.loads(reads.read_text())
            results["runs"][str(workers)] = {
                "cpus_per_worker": config.cpus_per_worker,
                "per_worker": per_worker,
                "share_of_split": [round(r["rows_read"] / split_rows, 3) for r in per_worker],
            }
            print(workers, "worker(s):", results["runs"][str(workers)], flush=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(REPO / "bench/results/worker_reads.json"))
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    if args.inside:
        measure(out)
        return
    with (
        tempfile.TemporaryDirectory(prefix="worker-reads-") as logs,
        LoopbackCluster(log_dir=Path(logs), num_cpus=2) as cluster,
    ):
        result = cluster.submit(
            ["python", "bench/worker_reads.py", "--inside", "--out", str(out)],
            working_dir=str(REPO),
            runtime_env={"env_vars": PROCESS_ENV},
            timeout=1800,
        )
    if result.status != "SUCCEEDED":
        sys.exit(f"the job {result.status}:\n{result.logs[-3000:]}")
    results = json.loads(out.read_text())
    results["command"] = "python bench/worker_reads.py"
    results["nodes"] = "2 x 2 CPUs on one 2-core machine (loopback cluster)"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
