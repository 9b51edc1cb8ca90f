"""Training stage: a Keras model on N Ray Train workers, checkpointed every epoch.

Workers read the prepared run's decoded cache through Ray Data (no JPEG decoding), train
under MultiWorkerMirroredStrategy, and report a checkpoint every epoch, so a rerun with
the same name, or a restarted worker, continues from the last one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import ray
import ray.train
import tf_keras as keras
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.tensorflow import TensorflowTrainer

from poster_ray import models
from poster_ray.config import MONITORS, PreprocessSpec, RunDir, TrainConfig, pick_best
from poster_ray.data import load_split, shard_sizes
from poster_ray.errors import PosterRayError
from poster_ray.metrics import plot_history

MODEL_FILE = "model.keras"
HISTORY_FILE = "history.json"
PLACEMENT_GROUP_KEY = "placement_group"


def model_dir(run: RunDir, name: str) -> Path:
    return run.root / "models" / name


def train(run: RunDir, name: str, config: TrainConfig) -> Path:
    """Train (or resume) run `name` on the prepared `run`; returns its model directory."""
    check_settings(config)
    spec = PreprocessSpec.load(run.preprocess)
    check_model_builds(config, len(run.load_genres()), spec.image_size)
    trainer = make_trainer(load_training_data(run, config.workers), config, name, run.root / "ray")
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as error:
        last_line = str(error).strip().splitlines()[-1]
        raise PosterRayError(
            f"training run {name!r} failed ({last_line}); logs and checkpoints are in "
            f"{run.root / 'ray' / name}"
        ) from None
    if result.checkpoint is None:
        raise PosterRayError(f"training run {name!r} reported no checkpoint")
    chosen = best_checkpoint(result, config.monitor) if config.early_stopping else None
    return export_model(run, name, config, chosen or result.checkpoint, result.checkpoint)


@dataclass(frozen=True)
class TrainingData:
    """What a training run reads, prepared once in the driver and shared by every run
    (a tuning experiment's trials too): the materialized datasets and their sizes."""

    datasets: dict[str, ray.data.Dataset]
    train_rows: int  # in the smallest worker shard
    val_rows: int
    num_genres: int
    image_size: int

    @property
    def workers(self) -> int:
        return len(self.datasets) - 1  # one train shard per worker, plus val


def load_training_data(run: RunDir, workers: int) -> TrainingData:
    return TrainingData(
        datasets=worker_datasets(run, workers),
        train_rows=min(shard_sizes(run, "train", workers)),
        val_rows=shard_sizes(run, "val", 1)[0],
        num_genres=len(run.load_genres()),
        image_size=PreprocessSpec.load(run.preprocess).image_size,
    )


def make_trainer(
    data: TrainingData,
    config: TrainConfig,
    name: str,
    storage: Path,
    callbacks: Sequence[ray.train.UserCallback] = (),
) -> TensorflowTrainer:
    """A Ray Train run `name` under `storage`: same name, same storage resumes it."""
    if data.workers != config.workers:
        raise ValueError(f"data is sharded for {data.workers} workers, not {config.workers}")
    return TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config={
            **asdict(config),
            "num_genres": data.num_genres,
            "image_size": data.image_size,
            "per_worker_batch": per_worker_batch(config),
            "steps": step_counts(data, config),
            "monitor_mode": MONITORS[config.monitor],
        },
        scaling_config=ScalingConfig(
            num_workers=config.workers,
            use_gpu=config.gpu,
            resources_per_worker={"CPU": worker_cpus(config)},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(Path(storage).resolve()),
            failure_config=FailureConfig(max_failures=config.max_failures),
            # Ray always keeps the latest checkpoint too (for resuming), beside the best.
            checkpoint_config=CheckpointConfig(
                num_to_keep=1,
                checkpoint_score_attribute=config.monitor,
                checkpoint_score_order=MONITORS[config.monitor],
            ),
            callbacks=list(callbacks),
        ),
        datasets=data.datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),
    )


def check_settings(config: TrainConfig) -> None:
    """Counts that must be positive, checked before Ray starts anything."""
    for setting in ("workers", "epochs", "batch_size"):
        if getattr(config, setting) < 1:
            raise PosterRayError(f"--{setting.replace('_', '-')} must be at least 1")
    if config.monitor not in MONITORS:
        raise PosterRayError(f"unknown monitor {config.monitor!r}; choose one of {list(MONITORS)}")
    if config.batch_size < config.workers:
        raise PosterRayError(
            f"--batch-size {config.batch_size} is smaller than --workers {config.workers}: "
            "every worker needs at least one poster per step"
        )


def per_worker_batch(config: TrainConfig) -> int:
    """Each worker's share of the global batch."""
    return config.batch_size // config.workers


def check_model_builds(config: TrainConfig, num_genres: int, image_size: int) -> None:
    """Build the model once in the driver, so a bad setting fails here, in one line,
    instead of in every worker and every retry."""
    try:
        build_configured_model(asdict(config), num_genres, image_size)
    except (ValueError, TypeError) as error:
        message = str(error).strip().splitlines()[0]
        raise PosterRayError(
            f"cannot build {config.model} for {image_size}x{image_size} posters "
            f"with hparams {config.hparams}: {message}"
        ) from None
    finally:
        keras.backend.clear_session()


def build_configured_model(config: dict, num_genres: int, image_size: int) -> keras.Model:
    hparams = dict(config["hparams"])
    if config["model"] == "vgg16":
        hparams.setdefault("weights", config["weights"])
    return models.build_model(
        config["model"],
        num_genres,
        image_size,
        mixed_precision=config["mixed_precision"],
        **hparams,
    )


def worker_datasets(run: RunDir, workers: int) -> dict[str, ray.data.Dataset]:
    """Each worker's own id-hashed training shard, and the whole validation split.

    Materialized once (uint8, in Ray's object store, spilling to disk when full): every
    epoch re-executing the read pipeline cost 7-17 s per pass on 2 cores. No
    streaming_split: its lockstep epochs deadlocked when one worker's tf.data prefetch
    ran an epoch ahead of the other's.
    """
    # Datasets carry the context they were made in: no iteration progress bars in the
    # workers, whose per-epoch lines say more and cost the driver less.
    ray.data.DataContext.get_current().enable_progress_bars = False
    shards = {
        f"train_{rank}": load_split(run, "train", shuffle=True, shard=(rank, workers))
        for rank in range(workers)
    }
    return {
        name: dataset.materialize()
        for name, dataset in {**shards, "val": load_split(run, "val")}.items()
    }


def step_counts(data: TrainingData, config: TrainConfig) -> dict[str, int]:
    """Steps per epoch, the same on every worker (Keras needs them for distributed data).

    A training epoch is one pass over the smallest shard; validation covers the whole
    validation split on every worker.
    """
    batch = per_worker_batch(config)
    for split, rows in (("train", data.train_rows), ("validation", data.val_rows)):
        if rows < batch:
            raise PosterRayError(
                f"the {split} split has {rows} posters per worker, fewer than one batch of "
                f"{batch}: lower --batch-size (it is global) or --workers"
            )
    return {"train": data.train_rows // batch, "val": data.val_rows // batch}


def worker_cpus(config: TrainConfig) -> float:
    """CPUs each worker reserves: by default all but one, which Ray Data needs.

    Workers that reserve every CPU leave Ray Data's read tasks unschedulable and the
    run hangs; TensorFlow's real thread count is set separately (configure_threads).
    """
    if config.cpus_per_worker is not None:
        return config.cpus_per_worker
    cluster_cpus = ray.cluster_resources().get("CPU", 1.0)
    return max(0.25, (cluster_cpus - 1.0) / config.workers)


def best_checkpoint(result: ray.train.Result, monitor: str) -> ray.train.Checkpoint | None:
    """The kept checkpoint with the best `monitor` value: early stopping's best weights."""
    scored = [(metrics[monitor], ckpt) for ckpt, metrics in result.best_checkpoints]
    if not scored:
        return None
    return pick_best(monitor)(scored, key=lambda pair: pair[0])[1]


def export_model(
    run: RunDir,
    name: str,
    config: TrainConfig,
    chosen: ray.train.Checkpoint,
    latest: ray.train.Checkpoint,
) -> Path:
    """Copy the chosen model and the full history out of Ray's storage; draw the curves."""
    out = model_dir(run, name)
    out.mkdir(parents=True, exist_ok=True)
    with chosen.as_directory() as directory:
        shutil.copyfile(Path(directory) / MODEL_FILE, out / MODEL_FILE)
        chosen_epoch = json.loads((Path(directory) / HISTORY_FILE).read_text())[-1]["epoch"]
    with latest.as_directory() as directory:
        history = json.loads((Path(directory) / HISTORY_FILE).read_text())
    (out / HISTORY_FILE).write_text(json.dumps(history, indent=1) + "\n")
    (out / "train_config.json").write_text(
        json.dumps({**asdict(config), "name": name, "chosen_epoch": chosen_epoch}, indent=2) + "\n"
    )
    columns = {key: [epoch[key] for epoch in history] for key in history[0]}
    plot_history(columns, out)
    return out


# ---------------------------------------------------------------- on each worker


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: build or restore the model, fit, report every epoch."""
    import tensorflow as tf

    context = ray.train.get_context()
    configure_threads(context.get_local_world_size())
    # Keras 3 fails under MultiWorkerMirroredStrategy with 2+ workers (keras#20585); Ray
    # sets TF_USE_LEGACY_KERAS=1 on workers and poster_ray builds with tf-keras, which works.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    per_replica_batch = config["per_worker_batch"]  # one replica per worker
    steps = config["steps"]

    with strategy.scope():
        model, history = restore_or_build(config)

    def worker_dataset(name: str, shuffle_buffer: int | None):
        return lambda _: dataset_shard(name, per_replica_batch, shuffle_buffer)

    rank = context.get_world_rank()
    train_data = strategy.distribute_datasets_from_function(
        worker_dataset(f"train_{rank}", config["shuffle_buffer"])
    )
    val_data = strategy.distribute_datasets_from_function(worker_dataset("val", None))
    callbacks = [EpochReport(history, config["batch_size"], rank)]
    if config["early_stopping"]:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=config["monitor"],
                mode=config["monitor_mode"],
                patience=config["early_stopping"],
            )
        )
    model.fit(
        train_data,
        validation_data=val_data,
        steps_per_epoch=steps["train"],
        validation_steps=steps["val"],
        epochs=config["epochs"],
        initial_epoch=len(history),
        callbacks=callbacks,
        verbose=0,
    )


def configure_threads(workers_on_this_node: int) -> None:
    """Give each worker its share of this node's cores: TF ignores OMP_NUM_THREADS.

    Two workers with TF's default pools (all cores each) ran 2.9x slower on 2 cores.
    """
    import tensorflow as tf

    threads = max(1, (os.cpu_count() or 1) // workers_on_this_node)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def restore_or_build(config: dict):
    """The last checkpoint's model (weights and optimizer) and history, or a new model."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            model = keras.models.load_model(Path(directory) / MODEL_FILE)
            history = json.loads((Path(directory) / HISTORY_FILE).read_text())
        return model, history
    model = build_configured_model(config, config["num_genres"], config["image_size"])
    models.compile_model(model, config["learning_rate"])
    return model, []


def dataset_shard(name: str, batch_size: int, shuffle_buffer: int | None):
    """This worker's shard of a split as an endless tf.data.Dataset of (images, labels).

    Keras needs fixed step counts for distributed datasets and then keeps one iterator
    across epochs, so the shard repeats (each pass is a new Ray Data epoch). drop_last
    keeps batch shapes fixed on every worker.
    """
    from ray.train.tensorflow import prepare_dataset_shard

    shard = ray.train.get_dataset_shard(name)
    return prepare_dataset_shard(
        shard.to_tf(
            "image",
            "labels",
            batch_size=batch_size,
            drop_last=True,
            local_shuffle_buffer_size=shuffle_buffer,
        )
    ).repeat()


class EpochReport(keras.callbacks.Callback):
    """Report metrics and a checkpoint (model + full history) to Ray every epoch.

    Every worker must save (the strategy's variables are synchronised collectively);
    only rank 0's copy becomes the checkpoint, the others write to a scratch directory.
    """

    def __init__(self, history: list[dict], global_batch: int, rank: int) -> None:
        super().__init__()
        self.history = history
        self.global_batch = global_batch
        self.rank = rank

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()
        self.train_seconds = None
        self.steps = 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.steps += 1

    def on_test_begin(self, logs: dict | None = None) -> None:
        if self.train_seconds is None:  # the first evaluation of the epoch: validation
            self.train_seconds = time.perf_counter() - self.started

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        train_seconds = self.train_seconds or time.perf_counter() - self.started
        metrics = {key: float(value) for key, value in (logs or {}).items()}
        metrics.update(
            micro_f1=micro_f1(metrics["precision"], metrics["recall"]),
            val_micro_f1=micro_f1(metrics["val_precision"], metrics["val_recall"]),
            epoch=epoch + 1,
            seconds=round(time.perf_counter() - self.started, 2),
            train_images_per_s=round(self.steps * self.global_batch / train_seconds, 2),
        )
        self.history.append(metrics)
        if self.rank == 0:
            print(
                f"epoch {metrics['epoch']}: loss {metrics['loss']:.4f}, "
                f"val_loss {metrics['val_loss']:.4f}, {metrics['train_images_per_s']:.1f} img/s"
            )
        with tempfile.TemporaryDirectory() as directory:
            # Explicitly Keras v3 (zip): tf-keras decides per thread, and in a Ray Train
            # worker thread every save after the first silently wrote HDF5 instead.
            self.model.save(Path(directory) / MODEL_FILE, save_format="keras_v3")
            (Path(directory) / HISTORY_FILE).write_text(json.dumps(self.history))
            checkpoint = ray.train.Checkpoint.from_directory(directory) if self.rank == 0 else None
            ray.train.report({**metrics, **placement_group_of_this_worker()}, checkpoint=checkpoint)


def micro_f1(precision: float, recall: float) -> float:
    """F1 of Keras' micro precision and recall (at 0.5); 0 when nothing is predicted."""
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def placement_group_of_this_worker() -> dict[str, str]:
    """The id of the placement group holding this run's workers, for whoever must free it.

    A tuning trial stopped early dies before its Train controller can remove the group,
    whose lifetime is the whole Ray job's (ray#54305): `tune.release_trial_workers`
    removes it by this id.
    """
    group = ray.util.get_current_placement_group()
    return {PLACEMENT_GROUP_KEY: group.id.hex()} if group is not None else {}
