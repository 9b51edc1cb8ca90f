"""Check a GPU node end to end: train the CNN for an epoch in float16, predict 10k posters.

For whoever has a GPU: no TensorFlow process of this project has run on one during its
development (there was none), and every GPU decision is forced in CPU tests; this script
is the real check. On a GPU node with the project installed (`make setup`):

    .venv/bin/python bench/gpu_check.py [--data ../shared/datasets/movie-posters]

Without --data it makes synthetic posters. It prints the GPUs Ray sees, the training
epoch's img/s and precision, the bulk-inference img/s and the precision every model
actor resolved (float16 on a GPU actor), and fails when no GPU is visible or any
precision is not the GPU's. About 5 minutes on one GPU; the figures go to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

PREDICTED_POSTERS = 10_000
TRAIN_POSTERS = 2_000


def synthetic_archive(root: Path, count: int) -> Path:
    """`count` posters to predict: a few hundred distinct files, linked over and over."""
    from synthetic import make_poster

    distinct = [make_poster(root / f"distinct_{i}.jpg", noise=30, seed=i) for i in range(200)]
    for i in range(count - len(distinct)):
        (root / f"poster_{i:06d}.jpg").symlink_to(distinct[i % len(distinct)])
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="the Movies-Poster dataset (default: synthetic posters)")
    parser.add_argument("--out", default=str(REPO / "bench/results/gpu_check.json"))
    args = parser.parse_args()

    import ray
    from synthetic import make_dataset

    from poster_ray import train
    from poster_ray.config import PreprocessSpec, TrainConfig
    from poster_ray.data.prepare import prepare
    from poster_ray.infer import run_inference
    from poster_ray.layout import RunDir
    from poster_ray.runtime import init_ray

    init_ray(None, progress_bars=False)
    gpus = ray.cluster_resources().get("GPU", 0)
    print(f"Ray sees {gpus:g} GPU(s)", flush=True)
    if not gpus:
        sys.exit("no GPU in this Ray cluster: run this on a GPU node (or a cluster with one)")
    results: dict = {"command": "python bench/gpu_check.py", "gpus": gpus}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        root = Path(scratch)
        data = Path(args.data) if args.data else make_dataset(root / "data", n=TRAIN_POSTERS)
        run = RunDir(root / "run")
        prepare(data, run, PreprocessSpec(128), seed=0, limit=TRAIN_POSTERS)
        config = TrainConfig(epochs=1, gpu=True, precision="float16", workers=1)
        train.train(run, "gpu_check", config)
        epoch = run.model("gpu_check").history.read_json()[-1]
        results["training"] = {
            key: epoch[key] for key in ("train_images_per_s", "compute_precision", "seconds")
        }
        print(f"training: {results['training']}", flush=True)

        archive = synthetic_archive(root / "archive", PREDICTED_POSTERS)
        summary = run_inference(
            run.model("gpu_check").bundle.uri, str(archive), root / "predictions", gpu=True
        )
        results["inference"] = {
            key: summary[key] for key in ("files", "ok", "errors", "wall_s", "images_per_s")
        }
        # Rows per precision the model actors resolved on their own devices.
        results["inference"]["precision_rows"] = summary["precision"]["rows"]
        print(f"inference: {results['inference']}", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    wrong = set(results["inference"]["precision_rows"]) - {"float16"}
    if results["training"]["compute_precision"] != "float16" or wrong:
        sys.exit(f"a GPU process did not compute in float16: {results}")
    print(f"GPU check passed; figures in {args.out}")


if __name__ == "__main__":
    main()
