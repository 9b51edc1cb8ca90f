"""Custom CNN training speed: Ray Train (1 and 2 workers) against plain Keras `fit`.

All three train the same model on the same prepared run's decoded training split, on
the same cores, one after the other; each figure is the median images/s of the
training phase of epochs 2.. (epoch 1 includes graph building). Ray's start-up per
`trainer.fit()` is reported separately as wall time.

    python bench/train_throughput.py RUN_DIR [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import tf_keras as keras

from poster_ray import models, train
from poster_ray.config import PreprocessSpec, RunDir, TrainConfig
from poster_ray.data import read_split_arrays
from poster_ray.runtime import init_ray


class EpochTimer(keras.callbacks.Callback):
    def __init__(self, images: int) -> None:
        super().__init__()
        self.images, self.rates = images, []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.rates.append(self.images / (time.perf_counter() - self.started))


def plain_keras(run: RunDir, epochs: int, batch_size: int) -> dict:
    _, images, labels = read_split_arrays(run, "train")
    used = len(images) // batch_size * batch_size
    model = models.build_model("custom_cnn", labels.shape[1], images.shape[1])
    models.compile_model(model)
    timer = EpochTimer(used)
    started = time.perf_counter()
    model.fit(
        images[:used],
        labels[:used],
        batch_size=batch_size,
        epochs=epochs,
        verbose=0,
        callbacks=[timer],
    )
    return {"img_s": statistics.median(timer.rates[1:]), "wall_s": time.perf_counter() - started}


def ray_train(run: RunDir, epochs: int, batch_size: int, workers: int) -> dict:
    name = f"bench-{workers}w-{time.time_ns()}"
    config = TrainConfig(epochs=epochs, batch_size=batch_size, workers=workers, early_stopping=0)
    started = time.perf_counter()
    out = train.train(run, name, config)
    history = json.loads((out / "history.json").read_text())
    rates = [epoch["train_images_per_s"] for epoch in history[1:]]
    return {"img_s": statistics.median(rates), "wall_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", help="a prepared run directory")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="bench/results/train_throughput.json")
    args = parser.parse_args()

    run = RunDir(Path(args.run))
    init_ray()
    results = {
        "plain_keras": plain_keras(run, args.epochs, args.batch_size),
        "ray_train_1_worker": ray_train(run, args.epochs, args.batch_size, 1),
        "ray_train_2_workers": ray_train(run, args.epochs, args.batch_size, 2),
    }
    baseline = results["plain_keras"]["img_s"]
    for name, result in results.items():
        result["ratio_to_plain_keras"] = round(result["img_s"] / baseline, 2)
        result["img_s"] = round(result["img_s"], 1)
        result["wall_s"] = round(result["wall_s"], 1)
        print(
            f"{name:22} {result['img_s']:7.1f} img/s  {result['ratio_to_plain_keras']:.2f}x  "
            f"(wall {result['wall_s']} s)"
        )
    spec = PreprocessSpec.load(run.preprocess)
    summary = {
        "image_size": spec.image_size,
        "epochs": args.epochs,
        "precision": "float32",
        "batch_size": args.batch_size,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
