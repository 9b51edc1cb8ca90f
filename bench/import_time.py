"""What a process pays to import a module: the median wall time of `python -c "import M"`
in fresh interpreters, each module in turn (so that the machine's load hits all alike).

    .venv/bin/python bench/import_time.py [--repeats 5] [MODULE ...]

By default: a Tune trial's process (poster_ray.tune.trial, no TensorFlow) beside the
driver's tuning module (poster_ray.tune.experiment) and TensorFlow's own import.
Results: bench/results/import_time.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODULES = ["poster_ray.tune.trial", "poster_ray.tune.experiment", "poster_ray.tf_import"]
OUT = Path(__file__).parent / "results" / "import_time.json"


def import_seconds(module: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", default=MODULES)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    times: dict[str, list[float]] = {module: [] for module in args.modules}
    for _ in range(args.repeats):
        for module in args.modules:
            times[module].append(import_seconds(module))
    results = {
        module: {"median_s": round(statistics.median(t), 2), "runs_s": [round(s, 2) for s in t]}
        for module, t in times.items()
    }
    for module, result in results.items():
        print(f"{module}: median {result['median_s']} s over {args.repeats} runs")
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {OUT}")


if __name__ == "__main__":
    main()
