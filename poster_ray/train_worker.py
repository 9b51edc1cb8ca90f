"""Each Ray Train worker: build or restore the model, fit it, report every epoch.

Runs under MultiWorkerMirroredStrategy: every worker trains on its own share of the
training split and validates on its share of the validation split (Keras sums the
shares' metrics), and takes part in every checkpoint. Inputs are decoded posters, or a
frozen backbone's cached features when only a transfer model's head trains.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import ray.train

from poster_ray import models, resources
from poster_ray.config import TrainConfig
from poster_ray.layout import HISTORY_FILE, MODEL_FILE
from poster_ray.loop_config import (
    LOOP_CONFIG_KEY,
    ModelInputs,
    Steps,
    TrainLoopConfig,
    worker_dataset_name,
)
from poster_ray.tf_import import keras

PLACEMENT_GROUP_KEY = "placement_group"
SHUFFLE_BUFFER = 256  # rows, when a shard streams from the object store
# The share of a node's available memory that its workers' in-memory shards may take.
IN_MEMORY_SHARE = 0.25


def build_configured_model(
    settings: TrainConfig, inputs: ModelInputs, precision: str = "float32"
) -> keras.Model:
    """The model `settings` describe on `inputs`: a transfer model's head alone on
    cached features, else the whole model."""
    if inputs.column == "features":
        return models.build_head_model(
            inputs.num_genres, inputs.shape[0], precision, **settings.hparams
        )
    hparams = dict(settings.hparams)
    if models.is_transfer(settings.model):
        hparams.update(
            weights=settings.weights,
            pooling=settings.pooling,
            more_backbones=settings.more_backbones,
            trainable_blocks=settings.fine_tune_blocks,
            augment=bool(settings.fine_tune_blocks),
        )
    return models.build_model(
        settings.model, inputs.num_genres, inputs.shape[0], precision, **hparams
    )


def train_loop_per_worker(train_loop_config: dict) -> None:
    """Ray Train worker: build or restore the model, fit, report every epoch."""
    from poster_ray.tf_import import tf

    loop: TrainLoopConfig = train_loop_config[LOOP_CONFIG_KEY]
    config = loop.settings

    # Ray Train logs every report at INFO through a logger named after its source file,
    # out of reach of its LoggingConfig; Ray Data notes that its progress bars are off.
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    resources.configure_tensorflow_threads(config.cpus_per_worker)
    resources.prepare_tensorflow_gpus()
    precision = resources.resolve_precision(config.precision, config.gpu)
    # Keras 3 fails under MultiWorkerMirroredStrategy with 2+ workers (keras#20585); Ray
    # sets TF_USE_LEGACY_KERAS=1 on workers and poster_ray builds with tf-keras, which works.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    context = ray.train.get_context()
    rank = context.get_world_rank()
    # A run is repeatable: initial weights (the strategy broadcasts rank 0's), dropout
    # and shuffles follow the seed; each worker's own, so dropout differs between them.
    keras.utils.set_random_seed(config.seed + rank)
    with strategy.scope():
        model, history = restore_or_build(loop, precision)
    early_stopping = ResumableEarlyStopping(
        history, config.monitor, loop.monitor_mode, config.early_stopping
    )
    if early_stopping.stopped_before():
        return  # a rerun of a run that early stopping ended: nothing left to train

    if history and rank == 0 and len(history) < config.epochs:
        print(
            f"resuming after epoch {len(history)}/{config.epochs} (its checkpoint): "
            f"epoch {len(history) + 1} next",
            flush=True,
        )

    read: dict[str, int] = {}  # rows and bytes of its training share a worker copied in

    def worker_dataset(split: str, steps: Steps):
        name = worker_dataset_name(split, rank)
        in_memory = reads_from_memory(
            config.in_memory, loop.dataset_bytes[name], context.get_local_world_size()
        )
        shuffle = split == "train"
        counts = read if shuffle else {}
        return lambda _: dataset_shard(name, loop.inputs.column, steps, shuffle, in_memory, counts)

    train_data = strategy.distribute_datasets_from_function(
        worker_dataset("train", loop.train_steps)
    )
    val_data = strategy.distribute_datasets_from_function(worker_dataset("val", loop.val_steps))
    # Order matters: every callback after DerivedMetrics sees its metrics in `logs`.
    callbacks = [
        DerivedMetrics(),
        EpochReport(history, loop, rank, precision, read),
    ]
    if config.early_stopping:
        callbacks.append(early_stopping)
    model.fit(
        train_data,
        validation_data=val_data,
        steps_per_epoch=loop.train_steps.steps,
        validation_steps=loop.val_steps.steps,
        epochs=config.epochs,
        initial_epoch=len(history),
        callbacks=callbacks,
        verbose=0,
    )


def restore_or_build(loop: TrainLoopConfig, precision: str):
    """The last checkpoint's model (weights and optimizer) and history, or a new model."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        # The model compiles as it loads, under the global policy: float16 needs it set
        # to get its loss-scaling optimizer (and its scale) back, not a bare Adam.
        resources.set_keras_precision(precision)
        with checkpoint.as_directory() as directory:
            model = keras.models.load_model(Path(directory) / MODEL_FILE)
            history = json.loads((Path(directory) / HISTORY_FILE).read_text())
        return model, history
    settings = loop.settings
    model = build_configured_model(settings, loop.inputs, precision)
    if loop.head_weights is not None:
        model.get_layer("head").set_weights(loop.head_weights)
    models.compile_model(
        model,
        settings.learning_rate,
        settings.loss,
        loop.loss_weights,
        backbone_rate=settings.fine_tune_backbone_rate,
    )
    return model, []


def dataset_shard(name: str, column: str, steps: Steps, shuffle: bool, in_memory: bool, read: dict):
    """This worker's shard of a split as an endless tf.data.Dataset of (inputs, labels).

    Keras needs fixed step counts for distributed datasets and then keeps one iterator
    across epochs, so the shard repeats; drop_last keeps batch shapes fixed on every
    worker. A training shard repeats whole (an epoch takes `steps` batches of it, the
    smallest share's worth), a validation shard its first `steps` batches, so that every
    epoch validates on the same posters. `in_memory` copies the shard into this process
    once and shuffles all of it every pass, as plain Keras does with arrays, and counts
    the rows and bytes it copied into `read`; otherwise each pass streams it from Ray's
    object store (a new Ray Data epoch: blocks in a new order, then a local shuffle
    buffer), which cost about 15% of training speed on 2 cores.
    """
    from ray.train.tensorflow import prepare_dataset_shard

    shard = ray.train.get_dataset_shard(name)
    if in_memory:
        batches = arrays_dataset(shard, column, steps.batch, shuffle, read)
    else:
        batches = shard.to_tf(
            column,
            "labels",
            batch_size=steps.batch,
            drop_last=True,
            local_shuffle_buffer_size=SHUFFLE_BUFFER if shuffle else None,
        )
    one_pass = batches if shuffle else batches.take(steps.steps)
    return prepare_dataset_shard(one_pass).repeat()


def arrays_dataset(shard, column: str, batch_size: int, shuffle: bool, read: dict | None = None):
    """The shard read once into two tensors; each pass gathers batches of a new
    permutation of their rows (only the indices are shuffled, never the images). One
    pass: dataset_shard repeats it."""
    from poster_ray.tf_import import tf

    blocks = list(shard.iter_batches(batch_size=None, batch_format="numpy"))
    inputs = np.concatenate([block[column] for block in blocks])
    labels = np.concatenate([block["labels"] for block in blocks])
    if read is not None:
        read.update(rows_read=len(labels), bytes_read=inputs.nbytes + labels.nbytes)
    inputs, labels = tf.constant(inputs), tf.constant(labels)
    rows = tf.data.Dataset.range(len(labels))
    if shuffle:
        rows = rows.shuffle(len(labels), reshuffle_each_iteration=True)
    batches = rows.batch(batch_size, drop_remainder=True).map(
        lambda index: (tf.gather(inputs, index), tf.gather(labels, index))
    )
    return batches.prefetch(tf.data.AUTOTUNE)


def reads_from_memory(forced: bool | None, shard_bytes: int, workers_on_node: int) -> bool:
    """Whether a worker copies its shard into memory: as told, else when the copies of
    every worker on this node fit in IN_MEMORY_SHARE of the node's available memory."""
    if forced is not None:
        return forced
    return shard_bytes * workers_on_node <= IN_MEMORY_SHARE * resources.available_memory()


class DerivedMetrics(keras.callbacks.Callback):
    """Add micro-F1 at 0.5 (from Keras' micro precision and recall) to each epoch's logs,
    so that early stopping, checkpoint scoring and tuning can all monitor it."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for prefix in ("", "val_"):
            logs[f"{prefix}micro_f1"] = micro_f1(
                float(logs[f"{prefix}precision"]), float(logs[f"{prefix}recall"])
            )


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """Early stopping whose patience counts the epochs before a resume too.

    Keras' own starts counting afresh at every `fit`, so a run resumed after a crash
    would train `patience` epochs more than it should.
    """

    def __init__(self, history: list[dict], monitor: str, mode: str, patience: int) -> None:
        super().__init__(monitor=monitor, mode=mode, patience=patience)
        self.history = history
        self.lower_is_better = mode == "min"

    def replayed(self) -> tuple[float | None, int]:
        """(best value, epochs since it) over the restored history."""
        best, wait = None, 0
        for epoch in self.history:
            value = epoch[self.monitor]
            improved = best is None or (value < best if self.lower_is_better else value > best)
            best, wait = (value, 0) if improved else (best, wait + 1)
        return best, wait

    def stopped_before(self) -> bool:
        return bool(self.patience) and self.replayed()[1] >= self.patience

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        best, self.wait = self.replayed()
        if best is not None:
            self.best = best


class EpochReport(keras.callbacks.Callback):
    """Report metrics and a checkpoint (model + full history) to Ray every epoch.

    Every worker must save (the strategy's variables are synchronised collectively);
    only rank 0's copy becomes the checkpoint, the others write to a scratch directory.
    """

    def __init__(
        self,
        history: list[dict],
        loop: TrainLoopConfig,
        rank: int,
        precision: str,
        read: dict[str, int],
    ) -> None:
        super().__init__()
        self.history = history
        self.read = read  # what this worker copied of its training share, when it did
        # Images per epoch from the fixed step count: a per-batch hook would make Keras
        # copy every step's logs to the host, a sync that cost training speed.
        self.images = loop.train_steps.steps * loop.settings.batch_size
        self.epochs = loop.settings.epochs
        self.rank = rank
        self.precision = precision

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()
        self.train_seconds = None

    def on_test_begin(self, logs: dict | None = None) -> None:
        if self.train_seconds is None:  # the first evaluation of the epoch: validation
            self.train_seconds = time.perf_counter() - self.started

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        train_seconds = self.train_seconds or time.perf_counter() - self.started
        metrics = {key: float(value) for key, value in (logs or {}).items()}
        metrics.update(
            epoch=epoch + 1,
            seconds=round(time.perf_counter() - self.started, 2),
            train_images_per_s=round(self.images / train_seconds, 2),
            train_images=self.images,  # every worker's: K views make K times as many
            compute_precision=self.precision,
            # Where the run was placed: workers in all, and beside rank 0 on its node.
            workers=ray.train.get_context().get_world_size(),
            workers_on_node=ray.train.get_context().get_local_world_size(),
        )
        self.history.append(metrics)
        with tempfile.TemporaryDirectory() as directory:
            # Explicitly Keras v3 (zip): tf-keras decides per thread, and in a Ray Train
            # worker thread every save after the first silently wrote HDF5 instead.
            self.model.save(Path(directory) / MODEL_FILE, save_format="keras_v3")
            (Path(directory) / HISTORY_FILE).write_text(json.dumps(self.history))
            checkpoint = ray.train.Checkpoint.from_directory(directory) if self.rank == 0 else None
            # Each worker's own reads reach Ray's callbacks; the history is rank 0's.
            reported = {**metrics, **self.read, **placement_group_of_this_worker()}
            ray.train.report(reported, checkpoint=checkpoint)
        # Printed once the epoch's checkpoint is saved: an interrupt after this line
        # never redoes the epoch it reports.
        if self.rank == 0:
            print(
                f"epoch {metrics['epoch']}/{self.epochs}: loss {metrics['loss']:.4f}, "
                f"val_loss {metrics['val_loss']:.4f}, val_pr_auc {metrics['val_pr_auc']:.3f}, "
                f"{metrics['train_images_per_s']:.1f} img/s ({self.precision})",
                flush=True,
            )


def micro_f1(precision: float, recall: float) -> float:
    """F1 of Keras' micro precision and recall (at 0.5); 0 when nothing is predicted."""
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def placement_group_of_this_worker() -> dict[str, str]:
    """The id of the placement group holding this run's workers, for whoever must free it.

    A tuning trial stopped early dies before its Train controller can remove the group,
    whose lifetime is the whole Ray job's (ray#54305): `tune.callbacks.ReleaseTrainWorkers`
    removes it by this id.
    """
    group = ray.util.get_current_placement_group()
    return {PLACEMENT_GROUP_KEY: group.id.hex()} if group is not None else {}
