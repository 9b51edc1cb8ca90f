"""Training stage: a Keras model on N Ray Train workers, checkpointed every epoch.

Workers read the prepared run's decoded cache through Ray Data (no JPEG decoding), train
under MultiWorkerMirroredStrategy, and report a checkpoint every epoch, so a rerun with
the same name, or a restarted worker, continues from the last one.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import ray
import ray.train
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

from poster_ray import models, resources
from poster_ray.config import MONITORS, PreprocessSpec, RunDir, TrainConfig, pick_best
from poster_ray.data import load_split, shard_sizes, without_progress_bars
from poster_ray.errors import PosterRayError
from poster_ray.metrics import plot_history
from poster_ray.tf_import import keras

MODEL_FILE = "model.keras"
HISTORY_FILE = "history.json"
PLACEMENT_GROUP_KEY = "placement_group"
SHUFFLE_BLOCK_ROWS = 32  # posters per block of a training shard: the unit of block shuffling


def model_dir(run: RunDir, name: str) -> Path:
    return run.root / "models" / name


def train(run: RunDir, name: str, config: TrainConfig) -> Path:
    """Train (or resume) run `name` on the prepared `run`; returns its model directory."""
    check_settings(config)
    spec = PreprocessSpec.load(run.preprocess)
    check_model_builds(config, len(run.load_genres()), spec.image_size)
    config = place_workers(config)
    print(
        f"training {config.model} as {name!r}: {config.workers} worker(s) x "
        f"{config.cpus_per_worker:g} CPUs{' + 1 GPU' if config.gpu else ''}, "
        f"precision {config.precision}, up to {config.epochs} epochs",
        flush=True,
    )
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
) -> ray.train.tensorflow.TensorflowTrainer:
    """A Ray Train run `name` under `storage`: same name, same storage resumes it."""
    # Imported here, after poster_ray.tf_import: it imports TensorFlow, loudly.
    from ray.train.tensorflow import TensorflowTrainer

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
            resources_per_worker={"CPU": config.cpus_per_worker},
            placement_strategy="SPREAD",  # one worker per node where the nodes allow
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
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
        datasets=data.datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),
    )


def check_settings(config: TrainConfig) -> None:
    """Settings errors in one line, before Ray starts anything."""
    for setting in ("workers", "epochs", "batch_size"):
        value = getattr(config, setting)
        if value is not None and value < 1:
            raise PosterRayError(f"--{setting.replace('_', '-')} must be at least 1")
    if config.monitor not in MONITORS:
        raise PosterRayError(f"unknown monitor {config.monitor!r}; choose one of {list(MONITORS)}")
    resources.resolve_precision(config.precision, config.gpu, native_bfloat16=False)
    check_batch_covers_workers(config)


def check_batch_covers_workers(config: TrainConfig) -> None:
    if config.workers is not None and config.batch_size < config.workers:
        raise PosterRayError(
            f"--batch-size {config.batch_size} is smaller than --workers {config.workers}: "
            "every worker needs at least one poster per step"
        )


def place_workers(config: TrainConfig, groups: int = 1) -> TrainConfig:
    """`config` with its worker count and CPUs per worker fixed from the cluster's nodes
    (`groups` runs at once share them: tuning trials)."""
    plan = resources.plan_workers(
        resources.alive_nodes(),
        "training",
        workers=config.workers,
        gpu=config.gpu,
        cpus_per_worker=config.cpus_per_worker,
        groups=groups,
    )
    placed = replace(config, workers=plan.workers, cpus_per_worker=plan.cpus_per_worker)
    check_batch_covers_workers(placed)
    return placed


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


def build_configured_model(
    config: dict, num_genres: int, image_size: int, precision: str = "float32"
) -> keras.Model:
    hparams = dict(config["hparams"])
    if config["model"] == "vgg16":
        hparams.setdefault("weights", config["weights"])
    return models.build_model(config["model"], num_genres, image_size, precision, **hparams)


def worker_datasets(run: RunDir, workers: int, seed: int = 0) -> dict[str, ray.data.Dataset]:
    """Each worker's own id-hashed training shard, and the whole validation split.

    Materialized once (uint8, in Ray's object store, spilling to disk when full): every
    epoch re-executing the read pipeline cost 7-17 s per pass on 2 cores. Each epoch
    then reads a shard's blocks (SHUFFLE_BLOCK_ROWS posters each) in a new random order,
    and the workers' local shuffle buffer mixes posters across neighbouring blocks. No
    streaming_split: its lockstep epochs deadlocked when one worker's tf.data prefetch
    ran an epoch ahead.
    """
    # Datasets carry the context they were made in: no iteration progress bars in the
    # workers, whose per-epoch lines say more and cost the driver less.
    with without_progress_bars():
        shards = {
            f"train_{rank}": load_split(run, "train", shard=(rank, workers))
            .repartition(target_num_rows_per_block=SHUFFLE_BLOCK_ROWS)
            .materialize()
            .randomize_block_order(
                seed=ray.data.RandomSeedConfig(seed=seed + rank, reseed_after_execution=True)
            )
            for rank in range(workers)
        }
        return {**shards, "val": load_split(run, "val").materialize()}


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
    """Copy the chosen model, as float32, and the full history out of Ray's storage;
    draw the curves. The model's training precision stays in train_config.json."""
    out = model_dir(run, name)
    out.mkdir(parents=True, exist_ok=True)
    with chosen.as_directory() as directory:
        model = models.load_model(Path(directory) / MODEL_FILE)
        chosen_epoch = json.loads((Path(directory) / HISTORY_FILE).read_text())[-1]["epoch"]
    models.with_precision(model, "float32").save(out / MODEL_FILE, save_format="keras_v3")
    keras.backend.clear_session()
    with latest.as_directory() as directory:
        history = json.loads((Path(directory) / HISTORY_FILE).read_text())
    (out / HISTORY_FILE).write_text(json.dumps(history, indent=1) + "\n")
    saved = {
        **asdict(config),
        "name": name,
        "chosen_epoch": chosen_epoch,
        "trained_in": history[-1].get("compute_precision"),
    }
    (out / "train_config.json").write_text(json.dumps(saved, indent=2) + "\n")
    columns = {key: [epoch[key] for epoch in history] for key in history[0]}
    plot_history(columns, out)
    return out


# ---------------------------------------------------------------- on each worker


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: build or restore the model, fit, report every epoch."""
    from poster_ray.tf_import import tf

    # Ray Train logs every report at INFO through a logger named after its source file,
    # out of reach of its LoggingConfig; Ray Data notes that its progress bars are off.
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    resources.configure_tensorflow_threads(config["cpus_per_worker"])
    precision = resources.resolve_precision(config["precision"], config["gpu"])
    # Keras 3 fails under MultiWorkerMirroredStrategy with 2+ workers (keras#20585); Ray
    # sets TF_USE_LEGACY_KERAS=1 on workers and poster_ray builds with tf-keras, which works.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model, history = restore_or_build(config, precision)
    early_stopping = ResumableEarlyStopping(
        history, config["monitor"], config["monitor_mode"], config["early_stopping"]
    )
    if early_stopping.stopped_before():
        return  # a rerun of a run that early stopping ended: nothing left to train

    def worker_dataset(name: str, shuffle_buffer: int | None):
        return lambda _: dataset_shard(name, config["per_worker_batch"], shuffle_buffer)

    rank = ray.train.get_context().get_world_rank()
    train_data = strategy.distribute_datasets_from_function(
        worker_dataset(f"train_{rank}", config["shuffle_buffer"])
    )
    val_data = strategy.distribute_datasets_from_function(worker_dataset("val", None))
    # Order matters: every callback after DerivedMetrics sees its metrics in `logs`.
    callbacks = [
        DerivedMetrics(),
        EpochReport(history, config["batch_size"], config["epochs"], rank, precision),
    ]
    if config["early_stopping"]:
        callbacks.append(early_stopping)
    model.fit(
        train_data,
        validation_data=val_data,
        steps_per_epoch=config["steps"]["train"],
        validation_steps=config["steps"]["val"],
        epochs=config["epochs"],
        initial_epoch=len(history),
        callbacks=callbacks,
        verbose=0,
    )


def restore_or_build(config: dict, precision: str):
    """The last checkpoint's model (weights and optimizer) and history, or a new model."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            model = keras.models.load_model(Path(directory) / MODEL_FILE)
            history = json.loads((Path(directory) / HISTORY_FILE).read_text())
        return model, history
    model = build_configured_model(config, config["num_genres"], config["image_size"], precision)
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
        self, history: list[dict], global_batch: int, epochs: int, rank: int, precision: str
    ) -> None:
        super().__init__()
        self.history = history
        self.global_batch = global_batch
        self.epochs = epochs
        self.rank = rank
        self.precision = precision

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
            epoch=epoch + 1,
            seconds=round(time.perf_counter() - self.started, 2),
            train_images_per_s=round(self.steps * self.global_batch / train_seconds, 2),
            compute_precision=self.precision,
        )
        self.history.append(metrics)
        if self.rank == 0:
            print(
                f"epoch {metrics['epoch']}/{self.epochs}: loss {metrics['loss']:.4f}, "
                f"val_loss {metrics['val_loss']:.4f}, val_pr_auc {metrics['val_pr_auc']:.3f}, "
                f"{metrics['train_images_per_s']:.1f} img/s ({self.precision})",
                flush=True,
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
