"""Ray Data poster preprocessing against a single-process PIL loop, same posters, same cores.

Both sides run the same decode -> RGB -> resize function (poster_ray.images) over the
same files; they alternate for --rounds rounds and the medians are compared, since this
machine is shared and noisy. Ray start-up is timed separately: it is paid once per job.

    python bench/preprocess_throughput.py --data ../shared/datasets/movie-posters
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import ray

from poster_ray.config import PreprocessSpec
from poster_ray.data.cache import decode_dataset
from poster_ray.data.context import all_cpus_to_one_operator
from poster_ray.images import decode_files
from poster_ray.runtime import init_ray


def pil_loop(paths: np.ndarray, spec: PreprocessSpec) -> float:
    started = time.perf_counter()
    _, errors = decode_files(paths, spec)
    assert (errors == "").all(), errors[errors != ""][:3]
    return len(paths) / (time.perf_counter() - started)


def ray_data(paths: np.ndarray, spec: PreprocessSpec) -> float:
    records = pd.DataFrame({"id": [Path(p).stem for p in paths], "path": paths})
    started = time.perf_counter()
    rows = 0
    with all_cpus_to_one_operator():
        for batch in decode_dataset(records, spec).iter_batches(batch_size=None):
            rows += len(batch["id"])
    assert rows == len(paths)
    return rows / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="../shared/datasets/movie-posters")
    parser.add_argument(
        "--limit", type=int, default=None, help="posters per measurement (default: all)"
    )
    parser.add_argument("--image-size", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="bench/results/preprocess_throughput.json")
    args = parser.parse_args()

    spec = PreprocessSpec(args.image_size)
    paths = np.array(sorted(str(p) for p in Path(args.data, "Images").glob("*.jpg")))[: args.limit]
    started = time.perf_counter()
    init_ray(progress_bars=False)
    ray_start = time.perf_counter() - started
    ray_data(paths[:64], spec)  # start the worker processes once, as a running job has them

    loop, parallel = [], []
    for round_ in range(args.rounds):
        loop.append(pil_loop(paths, spec))
        parallel.append(ray_data(paths, spec))
        print(
            f"round {round_ + 1}: PIL loop {loop[-1]:.0f} img/s, Ray Data {parallel[-1]:.0f} img/s"
        )
    result = {
        "posters": len(paths),
        "image_size": args.image_size,
        "cpus": int(ray.cluster_resources()["CPU"]),
        "ray_init_s": round(ray_start, 1),
        "pil_loop_img_s": round(statistics.median(loop), 1),
        "ray_data_img_s": round(statistics.median(parallel), 1),
        "ratio": round(statistics.median(parallel) / statistics.median(loop), 2),
        "rounds": args.rounds,
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
