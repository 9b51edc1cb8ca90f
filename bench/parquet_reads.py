"""Ray Data's two Parquet readers side by side, on a run's decoded cache.

A training run reads its training and validation splits from the cache (a few Parquet
files each) once per run; Ray Data 2.60's second datasource (its default) starts
footer-reader actors for every read. Each round reads both splits with each reader
(alternating, on the same cores) and prints the medians; poster_ray uses the faster.

    python bench/parquet_reads.py [--posters 160] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from synthetic import prepared_run  # noqa: E402

from poster_ray.data.cache import load_split  # noqa: E402
from poster_ray.data.context import data_context  # noqa: E402
from poster_ray.runtime import init_ray  # noqa: E402


def read_both_splits(run, size: int) -> float:
    """Seconds to read and materialize the training and validation splits."""
    started = time.perf_counter()
    for split in ("train", "val"):
        load_split(run, split, image_size=size).materialize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posters", type=int, default=160)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    init_ray(num_cpus=2, progress_bars=False)
    run = prepared_run(Path(tempfile.mkdtemp()), n=args.posters, image_size=args.size)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for v2 in (False, True):
            with data_context(use_datasource_v2=v2):
                times[v2].append(read_both_splits(run, args.size))
    first, second = (statistics.median(times[v2]) for v2 in (False, True))
    print(f"{args.posters} posters at {args.size} px, median of {args.rounds} rounds:")
    print(f"  first datasource (poster_ray's): {first:.2f} s for both splits")
    print(f"  second datasource (the default): {second:.2f} s ({second / first:.1f}x)")


if __name__ == "__main__":
    main()
