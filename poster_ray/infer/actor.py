"""The model stage: a Ray actor that loads the bundle once, then turns decoded batches into
output rows.

Each actor picks its own precision from its own hardware ("auto": float16 on a GPU,
bfloat16 on a CPU with native bfloat16, else float32; EfficientNet-Lite bundles stay in
float32 on CPUs), so one job can run on mixed nodes.
The bundle's float32 model is converted with `models.with_precision` (same weights, the
genre head kept in float32). TensorFlow's thread pools are sized from what the actor
reserved (`InferencePlan.threads`) before TensorFlow runs anything: it ignores
OMP_NUM_THREADS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from poster_ray.bundle import load_bundle
from poster_ray.infer.rows import rows_table
from poster_ray.resources import (
    AUTO_PRECISION,
    configure_tensorflow_threads,
    prepare_tensorflow_gpus,
    resolve_precision,
)

if TYPE_CHECKING:  # TensorFlow is imported by the actor, never by the driver.
    from poster_ray.tf_import import keras

# `auto` keeps these bundles in float32 on bfloat16 CPUs: EfficientNet-Lite in bfloat16
# kept the float32 top-1 genre on only 98.8% of 5,000 real posters (the tolerance is 99%)
# and ran no faster on an AVX512_BF16 CPU (bench/infer_throughput.py, README).
AUTO_FLOAT32_MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# Columns the actor adds for the driver only; the part files never hold them.
CHUNK_COLUMN = "chunk"
PRECISION_COLUMN = "precision"


def model_in_precision(model: keras.Model, precision: str) -> keras.Model:
    """The bundle's float32 model, computing in `precision` (a resolved name)."""
    from poster_ray import models

    return model if precision == "float32" else models.with_precision(model, precision)


def inference_precision(
    requested: str, gpu: bool, model: str | None, native_bfloat16: bool | None = None
) -> str:
    """The precision an actor predicts in: `resolve_precision`, except that `auto` keeps
    the models of AUTO_FLOAT32_MODELS in float32 where it would pick bfloat16."""
    resolved = resolve_precision(requested, gpu, native_bfloat16)
    if requested == AUTO_PRECISION and resolved == "bfloat16" and model in AUTO_FLOAT32_MODELS:
        return "float32"
    return resolved


class ModelActor:
    """Decoded batches (path, chunk, image, error) in, output rows (+ chunk) out."""

    def __init__(
        self, bundle: str, threads: int, precision: str, all_probabilities: bool, views: int = 1
    ) -> None:
        self.threads = configure_tensorflow_threads(threads)
        gpus = prepare_tensorflow_gpus()
        from poster_ray.models import inference_function
        from poster_ray.models.views import with_test_views

        loaded = load_bundle(bundle)
        self.genres = loaded.genres
        self.thresholds = loaded.thresholds
        self.bundle_hash = loaded.info["content_hash"]
        self.precision = inference_precision(precision, gpus > 0, loaded.info.get("model"))
        model = model_in_precision(loaded.model, self.precision)
        self.predict = inference_function(with_test_views(model, views))
        self.all_probabilities = all_probabilities

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        ok = batch["error"] == ""
        probabilities = np.zeros((len(ok), len(self.genres)), dtype=np.float32)
        if ok.any():
            probabilities[ok] = self.predict(batch["image"][ok])
        table = rows_table(
            batch["path"],
            batch["error"],
            probabilities,
            self.genres,
            self.thresholds,
            self.bundle_hash,
            self.all_probabilities,
        )
        table = table.append_column(CHUNK_COLUMN, pa.array(batch["chunk"], pa.int64()))
        return table.append_column(
            PRECISION_COLUMN, pa.array([self.precision] * len(ok), pa.string())
        )
