"""The Ray Data pipeline: decode tasks and model actors as two stages that run at once.

    from_items(path, chunk) -> MapBatches(decode_batch)   tasks, their own CPUs
                            -> MapBatches(ModelActor)     an autoscaling actor pool
                            -> the driver, which commits each chunk as its rows arrive

Ray Data fuses a task stage into the actor stage after it when both ask for the same
resources: decoding then runs inside the model actor, one after the other, and never
beside prediction on another core. The two stages here always ask for different
resources (see `InferencePlan`), so they stay separate operators, and Ray Data's streaming
backpressure bounds the decoded posters queued between them.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import ray

from poster_ray.config import PreprocessSpec
from poster_ray.errors import PosterRayError
from poster_ray.infer.actor import CHUNK_COLUMN, PRECISION_COLUMN, ModelActor
from poster_ray.infer.decode import decode_batch
from poster_ray.infer.output import OutputFolder, part_name
from poster_ray.progress import Progress
from poster_ray.resources import Node, plan_workers
from poster_ray.runtime import without_progress_bars

# Rows per decode task, and so per model-actor task: each task costs Ray and Ray Data
# work across processes. On 2 cores the 128 px CNN's model stage ran at 820 img/s in
# blocks of 128, 1020 in 256 and 1050 in 512 (bench/infer_settings.py); 256 keeps a
# block of 250 px posters under 50 MB.
ROWS_PER_DECODE_TASK = 256
# Decoded blocks a model actor may have waiting: enough to never starve it, few enough
# that memory does not grow with the archive.
QUEUED_BLOCKS = 8
QUEUE_FLOOR_BYTES = 64 << 20
# CPUs a decode task reserves: less than a model actor's, so Ray Data never fuses them.
DECODE_TASK_CPUS = 0.5
# The share of a node's CPUs left to decode tasks (at least one task's): decoding is
# about a quarter of the CPU time per poster for the report's CNN at 128 or 250 px.
DECODE_CPU_SHARE = 0.25


@dataclass(frozen=True)
class InferencePlan:
    """How many model actors run (autoscaling between min and max), what each reserves and
    its TensorFlow threads, and what one decode task reserves."""

    min_actors: int
    max_actors: int
    cpus_per_actor: float
    gpus_per_actor: int
    threads: int
    decode_cpus: float

    def __post_init__(self) -> None:
        if self.decode_cpus == self.cpus_per_actor and not self.gpus_per_actor:
            raise PosterRayError(
                f"model actors of {self.cpus_per_actor:g} CPUs, as many as a decode task: "
                "Ray Data would fuse decoding into the model actor; ask for another "
                "--cpus-per-worker"
            )


def plan_inference(
    nodes: list[Node],
    workers: int | None = None,
    gpu: bool = False,
    cpus_per_worker: float | None = None,
    decode_cpus: float = DECODE_TASK_CPUS,
) -> InferencePlan:
    """Model actors and their CPUs from the nodes that will run them.

    `workers` fixes the pool's size; without it the pool grows from 1 actor to what the
    nodes hold (one per GPU with `gpu`, else one per node), as Ray Data sees the model
    stage fall behind. `DECODE_CPU_SHARE` of each node stays free for decode tasks; a
    CPU actor reserves the rest, a GPU actor one CPU beside its GPU. The actor's
    TensorFlow threads also count the decode share: on 2 cores, 1.4 reserved CPUs and 2
    threads beside one decode task beat 1 thread (see the README's benchmark).
    """
    usable = [node.cpus for node in nodes if node.cpus > 0 and (node.gpus >= 1 or not gpu)]
    leave = max(decode_cpus, min(usable, default=0.0) * DECODE_CPU_SHARE)
    if gpu and cpus_per_worker is None:
        cpus_per_worker = 1.0
    plan = plan_workers(nodes, "inference", workers, gpu, cpus_per_worker, leave_for_tasks=leave)
    return InferencePlan(
        min_actors=plan.workers if workers is not None else 1,
        max_actors=plan.workers,
        cpus_per_actor=plan.cpus_per_worker,
        gpus_per_actor=plan.gpus_per_worker,
        threads=plan.threads,
        decode_cpus=decode_cpus,
    )


@contextlib.contextmanager
def object_store_budget(object_store_bytes: int) -> Iterator[None]:
    """Build datasets (each keeps the context it was made in) holding at most
    `object_store_bytes` in the object store.

    Ray Data's default budget is a fraction of the whole object store: gigabytes, which
    decode tasks faster than the model would fill, so peak memory grew with the archive.
    """
    context = ray.data.DataContext.get_current()
    previous = context.execution_options
    context.execution_options = copy.deepcopy(previous)
    context.execution_options.resource_limits = ray.data.ExecutionResources.for_limits(
        object_store_memory=object_store_bytes
    )
    try:
        yield
    finally:
        context.execution_options = previous


def inference_dataset(
    records: pd.DataFrame,
    bundle: str,
    spec: PreprocessSpec,
    plan: InferencePlan,
    batch_size: int,
    precision: str,
    all_probabilities: bool,
    views: int = 1,
) -> ray.data.Dataset:
    """path, chunk -> decode (tasks, per-file errors) -> model (actor pool) -> output rows."""
    num_blocks = max(1, math.ceil(len(records) / ROWS_PER_DECODE_TASK))
    block_bytes = ROWS_PER_DECODE_TASK * math.prod(spec.shape)
    queue_bytes = max(QUEUE_FLOOR_BYTES, QUEUED_BLOCKS * block_bytes * plan.max_actors)
    # No progress bars: the job shows its own line.
    with without_progress_bars(), object_store_budget(queue_bytes):
        items = ray.data.from_items(records.to_dict("records"), override_num_blocks=num_blocks)
        decoded = items.map_batches(
            decode_batch, fn_kwargs={"spec": spec}, batch_size=None, num_cpus=plan.decode_cpus
        )
        return decoded.map_batches(
            ModelActor,
            fn_constructor_kwargs={
                "bundle": bundle,
                "threads": plan.threads,
                "precision": precision,
                "all_probabilities": all_probabilities,
                "views": views,
            },
            compute=ray.data.ActorPoolStrategy(min_size=plan.min_actors, max_size=plan.max_actors),
            batch_size=batch_size,
            num_cpus=plan.cpus_per_actor,
            num_gpus=plan.gpus_per_actor,
            # A model actor that dies is restarted and its batch retried: Ray Data's actor
            # pools default to max_restarts=-1 and max_task_retries=-1.
        )


class ChunkWriter:
    """Collects output rows per chunk and commits each chunk once all its rows arrived.

    Rows of a chunk come in several batches and in any order; sorting by path restores
    the input order, since chunks are slices of the sorted list. Counts the precision
    each row was predicted in, for the summary.
    """

    def __init__(
        self, output: OutputFolder, sizes: dict[int, int], schema: pa.Schema, progress: Progress
    ) -> None:
        self.output = output
        self.sizes = sizes
        self.schema = schema
        self.progress = progress
        self.pending: dict[int, list[pa.Table]] = {}
        self.received: dict[int, int] = {}
        self.precisions: Counter[str] = Counter()

    def add(self, table: pa.Table) -> None:
        self.precisions.update(table.column(PRECISION_COLUMN).to_pylist())
        errors = int(
            np.count_nonzero(table.column("status").to_numpy(zero_copy_only=False) != "ok")
        )
        self.progress.advance(len(table), errors)
        chunks = table.column(CHUNK_COLUMN).to_numpy()
        for chunk in np.unique(chunks).tolist():
            rows = table.filter(pa.array(chunks == chunk))
            self.pending.setdefault(chunk, []).append(rows)
            self.received[chunk] = self.received.get(chunk, 0) + len(rows)
            if self.received[chunk] == self.sizes[chunk]:
                self.commit(chunk)

    def commit(self, chunk: int) -> None:
        rows = pa.concat_tables(self.pending.pop(chunk)).sort_by("path")
        self.output.commit_part(rows.select(self.schema.names).cast(self.schema), chunk)
        self.progress.committed()

    def check_complete(self) -> None:
        """Every chunk must have been committed: a missing row would be a silent loss."""
        left = sorted(set(self.sizes) - self.output.finished_chunks())
        if left:
            raise PosterRayError(
                f"the pipeline ended with {len(left)} chunks incomplete (first: "
                f"{part_name(left[0])}); rerun the same command to retry them"
            )


def run_inference_dataset(dataset: ray.data.Dataset, writer: ChunkWriter) -> None:
    """Stream the dataset's rows into the writer; a failed commit stops the actors at once."""
    batches = dataset.iter_batches(batch_size=None, batch_format="pyarrow")
    with contextlib.closing(iter(batches)) as stream:
        for table in stream:
            writer.add(table)
    writer.check_complete()
