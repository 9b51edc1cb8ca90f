"""Custom CNN training speed: Ray Train against plain Keras `fit`, float32 and bfloat16.

Every configuration trains the same model on the same prepared run's decoded training
split, on the same cores, one after the other in this one process; each figure is the
median images/s of the training phase of epochs 2.. (epoch 1 builds graphs). Ray
Train's wall time includes its start-up per `trainer.fit()`. bfloat16 rows run only
where the CPU computes bfloat16 natively (emulated, it is several times slower), or
with --force-bfloat16.

    python bench/train_throughput.py RUN_DIR [--epochs 3] [--out bench/results/...json]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time
from dataclasses import replace

from poster_ray import models, resources, train
from poster_ray.config import TrainConfig
from poster_ray.data.cache import read_split_arrays
from poster_ray.layout import ModelDir, RunDir
from poster_ray.runtime import init_ray
from poster_ray.storage import Location
from poster_ray.tf_import import keras


class EpochTimer(keras.callbacks.Callback):
    def __init__(self, images: int) -> None:
        super().__init__()
        self.images, self.rates = images, []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.rates.append(self.images / (time.perf_counter() - self.started))


def plain_keras(run: RunDir, epochs: int, batch_size: int, precision: str) -> dict:
    """model.fit on numpy arrays in this process, TensorFlow's default thread pools; one
    warm-up epoch, then the timed ones."""
    _, images, labels = read_split_arrays(run, "train")
    used = len(images) // batch_size * batch_size
    model = models.build_model("custom_cnn", labels.shape[1], images.shape[1], precision)
    models.compile_model(model)
    timer = EpochTimer(used)
    started = time.perf_counter()
    model.fit(images[:used], labels[:used], batch_size=batch_size, epochs=1, verbose=0)  # warm-up
    model.fit(
        images[:used],
        labels[:used],
        batch_size=batch_size,
        epochs=epochs,
        verbose=0,
        callbacks=[timer],
    )
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")
    return {"img_s": statistics.median(timer.rates), "wall_s": time.perf_counter() - started}


def ray_train(run: RunDir, config: TrainConfig) -> dict:
    """`poster-ray train` with `config` (workers None: the default placement)."""
    name = f"bench-{time.time_ns()}"
    started = time.perf_counter()
    out = train.train(run, name, config)
    history = ModelDir(out).history.read_json()
    rates = [epoch["train_images_per_s"] for epoch in history[1:]]
    placed = train.place_workers(config)
    return {
        "img_s": statistics.median(rates),
        "wall_s": time.perf_counter() - started,
        "workers": placed.workers,
        "cpus_per_worker": placed.cpus_per_worker,
    }


def cpu_model() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    names = [line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line]
    return names[0] if names else platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a prepared run directory")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--force-bfloat16", action="store_true")
    parser.add_argument("--out", default="bench/results/train_throughput.json")
    args = parser.parse_args()

    run = RunDir(args.run)
    init_ray()
    native = resources.cpu_has_native_bfloat16()
    precisions = ["float32", *(["bfloat16"] if native or args.force_bfloat16 else [])]
    base = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, early_stopping=0)
    results = {}
    for precision in precisions:
        results[f"plain_keras_{precision}"] = plain_keras(
            run, args.epochs, args.batch_size, precision
        )
        results[f"ray_train_default_{precision}"] = ray_train(
            run, replace(base, precision=precision)
        )
        results[f"ray_train_2_workers_{precision}"] = ray_train(
            run, replace(base, precision=precision, workers=2)
        )
    for name, result in results.items():
        precision = name.rsplit("_", 1)[1]
        baseline = results[f"plain_keras_{precision}"]["img_s"]
        result["ratio_to_plain_keras"] = round(result["img_s"] / baseline, 2)
        result["ratio_to_float32"] = round(
            result["img_s"] / results[name.replace(precision, "float32")]["img_s"], 2
        )
        result["img_s"], result["wall_s"] = round(result["img_s"], 1), round(result["wall_s"], 1)
        print(
            f"{name:32} {result['img_s']:7.1f} img/s  {result['ratio_to_plain_keras']:.2f}x "
            f"plain Keras, {result['ratio_to_float32']:.2f}x float32 (wall {result['wall_s']} s)"
        )
    summary = {
        "command": "python bench/train_throughput.py "
        + " ".join([args.run, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]),
        "cpu": cpu_model(),
        "native_bfloat16": native,
        "image_size": run.load_spec().image_size,
        "train_posters": len(read_split_arrays(run, "train")[0]),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "results": results,
    }
    Location.of(args.out).write_json(summary)


if __name__ == "__main__":
    main()
