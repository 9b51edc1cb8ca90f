"""One bulk-inference job: inputs, output folder, plan, pipeline, progress and summary."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

import numpy as np
import pandas as pd

from poster_ray.bundle import PREPROCESS_FILE, verified_info
from poster_ray.config import InferSettings, PreprocessSpec
from poster_ray.errors import PosterRayError
from poster_ray.infer.inputs import chunk_bounds, resolve_inputs
from poster_ray.infer.output import OutputFolder, job_record
from poster_ray.infer.pipeline import (
    ChunkWriter,
    inference_dataset,
    plan_inference,
    run_inference_dataset,
)
from poster_ray.infer.rows import output_schema
from poster_ray.progress import Progress
from poster_ray.resources import PRECISIONS, alive_nodes
from poster_ray.runtime import init_ray
from poster_ray.storage import Location

# 1024 posters are 5-20 s of CPU inference: little work lost to a crash, and 49 part
# files for 50k posters.
DEFAULT_CHUNK_SIZE = 1024


def run_inference(
    bundle: str | os.PathLike,
    source: str,
    output: str | os.PathLike,
    workers: int | None = InferSettings.workers,
    gpu: bool = InferSettings.gpu,
    batch_size: int = InferSettings.batch_size,
    all_probabilities: bool = InferSettings.all_probabilities,
    views: int = InferSettings.views,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    num_cpus: int | None = InferSettings.num_cpus,
    precision: str = InferSettings.precision,
    cpus_per_worker: float | None = InferSettings.cpus_per_worker,
    stream: TextIO | None = None,
) -> dict:
    """Predict every input file into `output`, skipping chunks an earlier run committed.

    The settings are config.InferSettings' fields (`**asdict(settings)`), defaults there.

    `bundle` and `output` are local paths or URIs. `workers` fixes the number of model
    actors (default: from 1 up to what the cluster holds); `precision` is resolved by each
    actor on its own hardware. Progress goes to `stream` (stdout). Returns the summary,
    also written to `output/_summary.json`. Ray starts only when there is work left, so
    rerunning a finished job costs a directory listing.
    """
    started = time.perf_counter()
    stream = sys.stdout if stream is None else stream
    if min(workers or 1, batch_size, chunk_size) < 1:
        raise PosterRayError("--workers, --batch-size and the chunk size must be at least 1")
    if precision not in PRECISIONS:
        raise PosterRayError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    bundle_location, folder = Location.of(bundle), OutputFolder(output)
    Location.of(output).check_writable_folder("--output")
    paths = resolve_inputs(source)
    # Checked once here, without TensorFlow, before any worker starts: a bad or unsafe
    # bundle is one line, not a traceback per model actor.
    info = verified_info(bundle_location)
    folder.claim(
        job_record(
            source,
            paths,
            bundle_location.uri,
            info["content_hash"],
            chunk_size,
            all_probabilities,
            views,
        )
    )
    bounds = chunk_bounds(len(paths), chunk_size)
    done = folder.finished_chunks()
    todo = [(chunk, start, stop) for chunk, (start, stop) in enumerate(bounds) if chunk not in done]
    print(
        f"{len(paths)} files in {len(bounds)} chunks: {len(bounds) - len(todo)} done before, "
        f"{len(todo)} to run",
        file=stream,
        flush=True,
    )
    processed = sum(stop - start for _, start, stop in todo)
    progress = Progress(
        len(paths), len(paths) - processed, len(bounds), len(bounds) - len(todo), stream
    )
    precisions: dict[str, int] = {}
    if todo:
        init_ray(num_cpus, dashboard=False)  # the progress line says what the UI would
        plan = plan_inference(alive_nodes(), workers, gpu, cpus_per_worker)
        spec = PreprocessSpec.load(bundle_location / PREPROCESS_FILE)
        dataset = inference_dataset(
            chunk_records(paths, todo),
            bundle_location.uri,
            spec,
            plan,
            batch_size,
            precision,
            all_probabilities,
            views,
        )
        schema = output_schema(info["num_genres"], all_probabilities)
        writer = ChunkWriter(
            folder, {chunk: stop - start for chunk, start, stop in todo}, schema, progress
        )
        try:
            run_inference_dataset(dataset, writer)
        finally:
            progress.finish()  # also when stopped: the last figures, and a terminal's newline
        precisions = dict(writer.precisions)
    summary = summarize(folder, len(bounds), processed, time.perf_counter() - started)
    summary["precision"] = {"requested": precision, "rows": precisions}
    summary["progress"] = progress.figures()
    folder.write_summary(summary)
    return summary


def chunk_records(paths: list[str], todo: list[tuple[int, int, int]]) -> pd.DataFrame:
    """One row (path, chunk) per file of the chunks to run."""
    return pd.DataFrame(
        {
            "path": [path for _, start, stop in todo for path in paths[start:stop]],
            "chunk": [chunk for chunk, start, stop in todo for _ in range(start, stop)],
        }
    )


def summarize(folder: OutputFolder, num_chunks: int, processed: int, wall_s: float) -> dict:
    """Counts over the whole output (this run and earlier ones), speed of this run."""
    statuses = folder.statuses(num_chunks).to_numpy()
    ok = int(np.count_nonzero(statuses == "ok"))
    return {
        "output": str(folder),
        "files": len(statuses),
        "ok": ok,
        "errors": len(statuses) - ok,
        "processed": processed,
        "skipped": len(statuses) - processed,
        "parts": num_chunks,
        "wall_s": round(wall_s, 1),
        "images_per_s": round(processed / wall_s, 1),
    }


def format_inference_summary(summary: dict) -> str:
    """The job's last lines: totals over the output folder, then this run's speed."""
    used = ", ".join(f"{name} ({rows} rows)" for name, rows in summary["precision"]["rows"].items())
    return (
        f"{summary['files']} files: {summary['ok']} ok, {summary['errors']} errors, "
        f"in {summary['parts']} parts under {summary['output']}\n"
        f"this run: {summary['processed']} processed ({summary['skipped']} done before) in "
        f"{summary['wall_s']} s, {summary['images_per_s']} img/s"
        + (f", precision {used}" if used else "")
    )
