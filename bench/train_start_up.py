"""What one Ray Train run costs before any training: Ray's TensorflowTrainer against
poster_ray's trainer (DataParallelTrainer with poster_ray.multiworker's backend).

Both run a train loop that only reports once, on the same local Ray, alternating, so
the machine's noise falls on both; the figure is the median wall time of `fit()`.
TensorflowTrainer's backend config lives in `ray.train.tensorflow`, which imports
TensorFlow into the run's controller; poster_ray's does not.

    python bench/train_start_up.py [--repeats 5] [--workers 1] [--out bench/results/...json]

RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=2 (Ray's default) before the command measures both
with the controller polling its workers every 2 s instead of poster_ray's 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import ray.train
from infer_throughput import cpu_info
from ray.train import RunConfig, ScalingConfig
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

from poster_ray.multiworker import MultiWorkerConfig
from poster_ray.runtime import init_ray


def report_once(config: dict) -> None:
    ray.train.report({"epoch": 1})


def timed_fit(trainer_of, workers: int, storage: str) -> float:
    trainer = trainer_of(
        report_once,
        scaling_config=ScalingConfig(num_workers=workers),
        run_config=RunConfig(storage_path=storage, name=f"run-{time.time_ns()}"),
    )
    started = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - started


def poster_ray_trainer(*args, **kwargs) -> DataParallelTrainer:
    return DataParallelTrainer(*args, backend_config=MultiWorkerConfig(), **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", help="write the figures to this JSON file")
    args = parser.parse_args()
    if args.repeats < 1 or args.workers < 1:
        parser.error("--repeats and --workers must be at least 1")

    init_ray(progress_bars=False)
    from ray.train.tensorflow import TensorflowTrainer  # imports TensorFlow, here too

    trainers = {"TensorflowTrainer": TensorflowTrainer, "poster_ray": poster_ray_trainer}
    seconds = {name: [] for name in trainers}
    with tempfile.TemporaryDirectory() as storage:
        timed_fit(poster_ray_trainer, args.workers, storage)  # Ray's own first-run set-up
        for repeat in range(args.repeats):
            for name, trainer_of in trainers.items():
                seconds[name].append(timed_fit(trainer_of, args.workers, storage))
                print(f"repeat {repeat + 1}: {name} {seconds[name][-1]:.1f} s", flush=True)
    medians = {name: statistics.median(times) for name, times in seconds.items()}
    ratio = medians["TensorflowTrainer"] / medians["poster_ray"]
    print(
        f"median fit(): TensorflowTrainer {medians['TensorflowTrainer']:.1f} s, "
        f"poster_ray {medians['poster_ray']:.1f} s ({ratio:.2f}x), {args.workers} worker(s)"
    )
    if args.out:
        result = {
            "command": f"python bench/train_start_up.py --repeats {args.repeats} "
            f"--workers {args.workers}",
            "cpu": cpu_info(),
            # How often each run's controller polls its workers (runtime.PROCESS_ENV).
            "health_check_interval_s": os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"],
            "seconds": seconds,
            "median_s": medians,
            "ratio": ratio,
        }
        with open(args.out, "w") as out:
            json.dump(result, out, indent=2)


if __name__ == "__main__":
    main()
