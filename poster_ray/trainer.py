"""A Ray Train run of the training loop: each worker's share of the data and the trainer
that runs it.

TensorFlow-free, as is everything it imports: Tune's trial processes only start these
runs, and the run's own workers import TensorFlow where the loop starts
(train_worker.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import ray
import ray.train
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

from poster_ray.config import MONITORS, TrainConfig
from poster_ray.errors import PosterRayError
from poster_ray.loop_config import (
    LOOP_CONFIG_KEY,
    ModelInputs,
    Steps,
    TrainLoopConfig,
    worker_dataset_name,
)
from poster_ray.multiworker import MultiWorkerConfig
from poster_ray.storage import Location

SHUFFLE_BLOCK_ROWS = 32  # posters per block of a training shard: the unit of block shuffling
BLOCKS_PER_SHARE = 4  # at least, so that shares of a small split differ by little


@dataclass(frozen=True)
class TrainingData:
    """What a training run reads, prepared once in the driver and shared by every run
    (a tuning experiment's trials too): the materialized datasets and their sizes."""

    datasets: dict[str, ray.data.Dataset]
    train_rows: int  # in the smallest worker's share: what each worker takes per epoch
    val_rows: int  # in the smallest worker's share
    inputs: ModelInputs
    loss_weights: list[float]  # positive weight per genre, from the training split

    @property
    def workers(self) -> int:
        return len(self.datasets) // 2  # a train and a val share per worker


def make_trainer(
    data: TrainingData,
    config: TrainConfig,
    name: str,
    storage: Location,
    callbacks: Sequence[ray.train.UserCallback] = (),
    head_weights: list | None = None,
) -> DataParallelTrainer:
    """A Ray Train run `name` under `storage`: same name, same storage resumes it.

    Ray's TensorflowTrainer is this trainer with its TensorflowConfig, which would load
    TensorFlow into the run's controller (poster_ray.multiworker).
    """
    if data.workers != config.workers:
        raise ValueError(f"data is sharded for {data.workers} workers, not {config.workers}")
    steps = step_counts(data, config)
    loop = TrainLoopConfig(
        settings=config,
        inputs=data.inputs,
        loss_weights=data.loss_weights,
        train_steps=steps["train"],
        val_steps=steps["val"],
        dataset_bytes={name: dataset.size_bytes() for name, dataset in data.datasets.items()},
        head_weights=head_weights,
    )
    return DataParallelTrainer(
        train_loop_per_worker,
        backend_config=MultiWorkerConfig(),
        train_loop_config={LOOP_CONFIG_KEY: loop},
        scaling_config=ScalingConfig(
            num_workers=config.workers,
            use_gpu=config.gpu,
            resources_per_worker={"CPU": config.cpus_per_worker},
            placement_strategy="SPREAD",  # one worker per node where the nodes allow
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage.uri,
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


def step_counts(data: TrainingData, config: TrainConfig) -> dict[str, Steps]:
    """Batch size and steps per epoch of each split, the same on every worker (Keras
    needs fixed steps for distributed data).

    A training epoch is one pass over a worker's share; validation one pass over its
    share of the validation split, in smaller batches where the share is small.
    """
    batch = per_worker_batch(config)
    if data.train_rows < batch:
        raise PosterRayError(
            f"the training split has {data.train_rows} posters per worker, fewer than one "
            f"batch of {batch}: lower --batch-size (it is global) or --workers"
        )
    val_batch = min(batch, data.val_rows)
    return {
        "train": Steps(batch, data.train_rows // batch),
        "val": Steps(val_batch, data.val_rows // val_batch),
    }


def per_worker_batch(config: TrainConfig) -> int:
    """Each worker's share of the global batch."""
    return config.batch_size // config.workers


def worker_datasets(
    train: ray.data.Dataset, val: ray.data.Dataset, workers: int, seed: int = 0
) -> dict[str, ray.data.Dataset]:
    """Each worker's own share of the training and the validation split.

    Each split is read from the cache once and materialized (in Ray's object store,
    spilling to disk when full): every epoch re-executing the read pipeline cost 7-17 s
    per pass on 2 cores. Its blocks (share_block_rows) are then dealt out to the
    `workers` without reading them again; shares hold as many blocks give or take one
    (blocks differ by a read block's rows at most), and every worker takes as many
    batches per epoch as the smallest share holds (step_counts). A worker
    copies its share into its own memory when it fits and shuffles all of it every epoch,
    otherwise each epoch streams the share's blocks in a new random order through a local
    shuffle buffer (train_worker). Keras sums the validation metrics of the shares, so
    each epoch validates once in all.

    Dealing whole blocks runs no task: a block lost with its node is rebuilt by running
    its read and map tasks again, which ask only for what the workers leave. Ray Data's
    equal split cuts blocks, and its repartition makes them, in tasks of 1 CPU, which
    would wait forever behind workers that fill their nodes (a node lost in training
    hung so). No streaming_split: its lockstep epochs deadlocked when one
    worker's tf.data prefetch ran an epoch ahead.
    """
    train_shares = train.materialize().split(workers)
    val_shares = val.materialize().split(workers)
    datasets = {}
    for rank, (train_share, val_share) in enumerate(zip(train_shares, val_shares, strict=True)):
        order = ray.data.RandomSeedConfig(seed=seed + rank, reseed_after_execution=True)
        datasets[worker_dataset_name("train", rank)] = train_share.randomize_block_order(seed=order)
        datasets[worker_dataset_name("val", rank)] = val_share
    return datasets


def share_block_rows(rows: int, workers: int) -> int:
    """Rows per block of a split of `rows` posters dealt to `workers`: at most
    SHUFFLE_BLOCK_ROWS, and at least BLOCKS_PER_SHARE blocks per worker."""
    return max(1, min(SHUFFLE_BLOCK_ROWS, rows // (workers * BLOCKS_PER_SHARE)))


def smallest_share(datasets: dict[str, ray.data.Dataset], split: str, workers: int) -> int:
    """Rows of the split's smallest worker share: what every worker takes per epoch."""
    return min(datasets[worker_dataset_name(split, rank)].count() for rank in range(workers))


def train_loop_per_worker(config: dict) -> None:
    """The loop each Ray Train worker runs (train_worker.py), imported in the worker."""
    from poster_ray import train_worker

    train_worker.train_loop_per_worker(config)
