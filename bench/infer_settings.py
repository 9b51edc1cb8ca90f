"""The two settings that made bulk inference faster, each side by side in one run.

- How the model actor calls the model: Keras' `predict_on_batch`, the traced function
  the actors now use (`models.inference_function`), and `model.predict`, on the same
  decoded posters in batches of 64, in one fresh process with TensorFlow's threads
  sized to every core (median of five passes each, interleaved).
- Rows per decode task (and so per model-actor task): `poster-ray infer` end to end
  over the same list of posters with `infer.pipeline.ROWS_PER_DECODE_TASK` set to each
  value, in a fresh process each, alternating, twice; the wall time of the whole command
  and the model stage's rate from Ray Data's own operator stats (its rows over the time
  from its first to its last output, so start-up is left out).

Without --bundle, an untrained custom CNN bundle is built at --image-size, as in
bench/infer_throughput.py.

    python bench/infer_settings.py --image-size 128 [--posters 20000] [--rows 128 256]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from infer_throughput import (
    build_bundle,
    cpu_info,
    link_posters,
    load_average,
    timed_passes,
    versions,
)

BATCH = 64
# Run in a fresh process: the CLI's infer with another block size, then the model
# stage's figures from Ray Data's stats of the dataset the job ran.
INFER_WITH_ROWS = """
import sys
from poster_ray.infer import job, pipeline
pipeline.ROWS_PER_DECODE_TASK = int(sys.argv[1])
datasets = []
def recorded(*args, **kwargs):
    datasets.append(pipeline.inference_dataset(*args, **kwargs))
    return datasets[-1]
job.inference_dataset = recorded
from poster_ray import cli
code = cli.main(sys.argv[2:])
print("STATS-BEGIN\\n" + datasets[0].stats())
sys.exit(code)
"""
MODEL_STAGE = re.compile(
    r"MapBatches\(ModelActor\): \d+ tasks executed, \d+ blocks produced in ([\d.]+)s"
)


def _model_calls(bundle: str, paths: list[str]) -> dict:
    """In a fresh process: images/s of each way to call the model (median of five)."""
    from poster_ray.resources import configure_tensorflow_threads

    configure_tensorflow_threads(os.cpu_count())
    from poster_ray.bundle import load_bundle
    from poster_ray.images import decode_files
    from poster_ray.models import inference_function

    loaded = load_bundle(bundle)
    model, traced = loaded.model, inference_function(loaded.model)
    pixels, _ = decode_files(np.array(paths), loaded.spec)
    batches = [pixels[start : start + BATCH] for start in range(0, len(pixels), BATCH)]
    ways = {
        "predict_on_batch": lambda: [model.predict_on_batch(batch) for batch in batches],
        "inference_function": lambda: [traced(batch) for batch in batches],
        "keras_predict": lambda: model.predict(pixels, batch_size=BATCH, verbose=0),
    }
    runs = timed_passes(ways, len(pixels), passes=5)
    return {name: round(statistics.median(rate for rate, _ in runs[name]), 1) for name in runs}


def model_calls(bundle: Path, posters: list[Path], count: int) -> dict:
    paths = [str(path) for path in posters[:count]]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        rates = pool.apply(_model_calls, (str(bundle), paths))
    base = rates["predict_on_batch"]
    return {
        "images_per_s": rates,
        "against_predict_on_batch": {name: round(rate / base, 3) for name, rate in rates.items()},
    }


def infer_with_rows(rows: int, bundle: Path, list_file: Path, out: Path) -> dict:
    """One `poster-ray infer` (float32) with `rows` per decode task, in a fresh process."""
    command = [sys.executable, "-c", INFER_WITH_ROWS, str(rows), "infer", str(bundle)]
    command += ["--input", str(list_file), "--output", str(out), "--precision", "float32"]
    load_before = load_average()
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True)
    wall_s = time.perf_counter() - started
    if finished.returncode != 0:
        raise SystemExit(f"infer with {rows} rows failed:\n{finished.stdout[-3000:]}")
    files = json.loads((out / "_summary.json").read_text())["files"]
    stats = finished.stdout.split("STATS-BEGIN", 1)[1]
    model_s = float(MODEL_STAGE.search(stats)[1])
    return {
        "wall_s": round(wall_s, 1),
        "images_per_s": round(files / wall_s, 1),
        "model_stage_images_per_s": round(files / model_s, 1),
        "load_average_before": round(load_before, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", help="a bundle to benchmark (default: build a custom CNN)")
    parser.add_argument("--image-size", type=int, default=128, help="of the built CNN")
    parser.add_argument("--dataset", default="../shared/datasets/movie-posters")
    parser.add_argument("--posters", type=int, default=20000, help="end to end, per run")
    parser.add_argument("--call-posters", type=int, default=2048, help="for the model calls")
    parser.add_argument("--rows", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="bench/results/infer_settings.json")
    args = parser.parse_args()

    posters = sorted(path.resolve() for path in (Path(args.dataset) / "Images").glob("*.jpg"))
    with tempfile.TemporaryDirectory(prefix="infer-settings-") as scratch:
        bundle = Path(
            args.bundle or build_bundle(args.image_size, Path(args.dataset), Path(scratch))
        )
        calls = model_calls(bundle, posters, args.call_posters)
        print(f"model calls, batches of {BATCH}: {json.dumps(calls)}", flush=True)
        list_file = link_posters(posters, args.posters, Path(scratch, "links"))
        runs: dict = {str(rows): [] for rows in args.rows}
        for repeat in range(args.repeats):
            for rows in args.rows:
                out = Path(scratch, f"out-{rows}-{repeat}")
                run = infer_with_rows(rows, bundle, list_file, out)
                runs[str(rows)].append(run)
                print(
                    f"{args.posters} posters, {rows} rows per task: {json.dumps(run)}", flush=True
                )
    result = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "cpu": cpu_info(),
        "versions": versions(),
        "bundle": args.bundle or f"built: custom_cnn at {args.image_size} px, untrained",
        "model_calls": calls,
        "rows_per_decode_task": {
            rows: {
                key: statistics.median(run[key] for run in measured)
                for key in ("wall_s", "images_per_s", "model_stage_images_per_s")
            }
            | {"runs": measured}
            for rows, measured in runs.items()
        },
    }
    print(json.dumps({key: result[key] for key in ("model_calls", "rows_per_decode_task")}))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
