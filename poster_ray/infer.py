"""Bulk inference: every poster of a folder, glob, list or Parquet file -> Parquet rows.

The job is resumable and idempotent. The sorted, de-duplicated input list is cut into
fixed chunks; chunk ``i`` becomes ``DIR/part-<i:06d>.parquet``, written under
``DIR/_tmp`` and renamed into place once all its rows exist, so the rename is the
commit. A rerun skips committed chunks: stop the job at any moment, run the same command
again, and it finishes what is missing; rerunning a finished job does nothing.
``DIR/_job.json`` records the inputs' sha256 and the bundle's content hash, so a rerun
with another input or bundle into the same DIR fails instead of mixing results.

Each output row is one input file (flat, so SQL and pandas read it without unnesting)::

    path             string   absolute path (relative inputs resolve against the cwd)
    id               string   the file name without its extension
    top1_genre       string   most probable genre; null on error rows
    top1_prob        float32  its probability; null on error rows
    top2_genre, top2_prob, top3_genre, top3_prob    the same for the next two
    above_threshold  list<string>  genres at or above their bundle threshold, by prob
    probabilities    fixed_size_list<float32>[num_genres], bundle genre order; null on
                     error rows (only with --all-probabilities)
    bundle_hash      string   the bundle's content_hash
    status           string   "ok" or "error"
    error            string   why the file could not be used; "" when ok

Files that cannot be read or decoded (missing, empty, truncated, not an image, a
decompression bomb) become error rows and skip the model; the job carries on.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from poster_ray.bundle import PREPROCESS_FILE, Bundle, bundle_info, content_hash, load_bundle
from poster_ray.config import PreprocessSpec
from poster_ray.data import all_cpus_to_one_operator, decode_dataset
from poster_ray.errors import PosterRayError
from poster_ray.images import unpack_images
from poster_ray.predict import TOP_K, above_threshold, top_k
from poster_ray.runtime import init_ray

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
# 1024 posters are 10-20 s of CPU inference: little work lost to a crash, and 50
# part files for 50k posters.
DEFAULT_CHUNK_SIZE = 1024
JOB_FILE = "_job.json"
SUMMARY_FILE = "_summary.json"
TMP_DIR = "_tmp"
PART_NAME = re.compile(r"^part-(\d{6})\.parquet$")
# What makes two runs the same job, and how to name each in an error message.
JOB_KEYS = {
    "inputs_sha256": "the input list",
    "bundle_hash": "the bundle",
    "chunk_size": "the chunk size",
    "all_probabilities": "--all-probabilities",
}


# ---------------------------------------------------------------- inputs


def resolve_inputs(source: str) -> list[str]:
    """Absolute, sorted, de-duplicated paths from a folder, list file, Parquet or glob."""
    path = Path(source)
    if path.is_dir():
        found = images_in_folder(path)
    elif path.is_file() and path.suffix.lower() == ".parquet":
        found = paths_in_parquet(path)
    elif path.is_file():
        found = paths_in_list_file(path)
    elif any(char in source for char in "*?["):
        found = [match for match in glob.glob(source, recursive=True) if not Path(match).is_dir()]
    else:
        raise PosterRayError(f"{source}: no such folder, file or matching glob")
    paths = sorted({os.path.abspath(found_path) for found_path in found})
    if not paths:
        raise PosterRayError(f"{source}: no poster files found")
    check_utf8_names(paths)
    return paths


def images_in_folder(folder: Path) -> list[str]:
    """Every file with an image extension below `folder`, in any letter case."""
    return [
        str(path)
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS and not path.is_dir()
    ]


def paths_in_list_file(list_file: Path) -> list[str]:
    """One path per line; blank lines are skipped, spaces inside names are kept."""
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise PosterRayError(
            f"{list_file}: not a UTF-8 text file (expected one poster path per line)"
        ) from None
    return [line for line in lines if line.strip()]


def paths_in_parquet(parquet_file: Path) -> list[str]:
    """The non-empty values of the file's `path` column."""
    try:
        column = pq.read_table(parquet_file, columns=["path"]).column("path")
    except (pa.ArrowException, KeyError) as error:
        reason = str(error).splitlines()[0]
        raise PosterRayError(f"{parquet_file}: no readable 'path' column ({reason})") from None
    return [str(value) for value in column.to_pylist() if value]


def check_utf8_names(paths: list[str]) -> None:
    """Parquet strings are UTF-8: a file name with undecodable bytes cannot be a row."""
    for path in paths:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            raise PosterRayError(
                f"{path!r}: file name is not valid UTF-8; rename it or leave it out"
            ) from None


def chunk_bounds(num_paths: int, chunk_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each chunk: fixed by position, so every rerun cuts the same."""
    return [
        (start, min(start + chunk_size, num_paths)) for start in range(0, num_paths, chunk_size)
    ]


# ---------------------------------------------------------------- the output folder


def part_name(chunk: int) -> str:
    return f"part-{chunk:06d}.parquet"


def finished_chunks(directory: Path) -> set[int]:
    """Chunks whose part file is committed (temporary files live in _tmp, never here)."""
    if not directory.is_dir():
        return set()
    return {int(match[1]) for name in os.listdir(directory) if (match := PART_NAME.match(name))}


def job_record(
    source: str,
    paths: list[str],
    bundle: Path,
    bundle_hash: str,
    chunk_size: int,
    all_probabilities: bool,
) -> dict:
    """What _job.json holds: the JOB_KEYS that identify the job, plus notes for humans."""
    inputs_sha256 = hashlib.sha256("\0".join(paths).encode()).hexdigest()
    return {
        "inputs_sha256": inputs_sha256,
        "bundle_hash": bundle_hash,
        "chunk_size": chunk_size,
        "all_probabilities": all_probabilities,
        "input": source,
        "files": len(paths),
        "bundle": str(bundle),
    }


def claim_output_dir(directory: Path, job: dict) -> None:
    """Record the job in DIR/_job.json, or check that DIR holds this same job's parts."""
    record = directory / JOB_FILE
    if record.is_file():
        recorded = json.loads(record.read_text())
        changed = [name for key, name in JOB_KEYS.items() if recorded.get(key) != job[key]]
        if changed:
            raise PosterRayError(
                f"{directory} holds results of another job ({', '.join(changed)} differ); "
                "write to a new --output folder or delete this one"
            )
    elif finished_chunks(directory):
        raise PosterRayError(
            f"{directory} holds part files but no {JOB_FILE}: not a poster-ray infer output; "
            "write to a new --output folder"
        )
    else:
        directory.mkdir(parents=True, exist_ok=True)
        write_json_atomically(record, job)
    # Whatever an interrupted run left half-written is thrown away.
    shutil.rmtree(directory / TMP_DIR, ignore_errors=True)
    (directory / TMP_DIR).mkdir()


def write_json_atomically(path: Path, value: object) -> None:
    """Write beside, then rename: a crash never leaves half a JSON file."""
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(staging, path)


def commit_part(table: pa.Table, directory: Path, chunk: int) -> None:
    """Write one chunk's rows under _tmp, flush them to disk, then rename into place."""
    staging = directory / TMP_DIR / part_name(chunk)
    pq.write_table(table, staging)
    with open(staging, "rb") as file:
        os.fsync(file.fileno())
    os.replace(staging, directory / part_name(chunk))


# ---------------------------------------------------------------- rows


def output_schema(num_genres: int, all_probabilities: bool) -> pa.Schema:
    """The one schema of every part file (see the module docstring)."""
    fields = [pa.field("path", pa.string()), pa.field("id", pa.string())]
    for rank in range(1, TOP_K + 1):
        fields += [
            pa.field(f"top{rank}_genre", pa.string()),
            pa.field(f"top{rank}_prob", pa.float32()),
        ]
    fields.append(pa.field("above_threshold", pa.list_(pa.string())))
    if all_probabilities:
        fields.append(pa.field("probabilities", pa.list_(pa.float32(), num_genres)))
    fields += [
        pa.field("bundle_hash", pa.string()),
        pa.field("status", pa.string()),
        pa.field("error", pa.string()),
    ]
    return pa.schema(fields)


def output_row(
    path: str, error: str, probabilities: np.ndarray | None, bundle: Bundle, all_probabilities: bool
) -> dict:
    """One file's row; `probabilities` is None when the file could not be decoded."""
    row = {"path": path, "id": Path(path).stem, "above_threshold": []}
    tops = top_k(probabilities, bundle.genres) if probabilities is not None else []
    for rank in range(TOP_K):
        genre, probability = tops[rank] if rank < len(tops) else (None, None)
        row[f"top{rank + 1}_genre"], row[f"top{rank + 1}_prob"] = genre, probability
    if probabilities is not None:
        row["above_threshold"] = above_threshold(probabilities, bundle.genres, bundle.thresholds)
    if all_probabilities:
        row["probabilities"] = None if probabilities is None else probabilities.tolist()
    row["bundle_hash"] = bundle.info["content_hash"]
    row["status"] = "ok" if probabilities is not None else "error"
    row["error"] = error
    return row


class Predictor:
    """The model in a Ray actor: loaded once, then decoded batches in, output rows out."""

    def __init__(self, bundle_path: str, threads: int, all_probabilities: bool) -> None:
        from poster_ray.tf_import import tf

        # TF's own thread pools ignore OMP_NUM_THREADS: size them to this actor's share.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        self.bundle = load_bundle(Path(bundle_path))
        self.all_probabilities = all_probabilities
        self.schema = output_schema(len(self.bundle.genres), all_probabilities).append(
            pa.field("chunk", pa.int64())
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        decoded = batch["error"] == ""
        images = unpack_images(batch["image"][decoded], self.bundle.spec)
        predictions = iter(self.bundle.model.predict_on_batch(images) if decoded.any() else [])
        rows = []
        for path, error, chunk, ok in zip(
            batch["path"], batch["error"], batch["chunk"], decoded, strict=True
        ):
            probabilities = next(predictions) if ok else None
            row = output_row(
                str(path), str(error), probabilities, self.bundle, self.all_probabilities
            )
            rows.append({**row, "chunk": int(chunk)})
        return pa.Table.from_pylist(rows, schema=self.schema)


# ---------------------------------------------------------------- the pipeline


def cpus_per_actor(workers: int, cluster_cpus: float) -> float:
    """At most one CPU per model actor, always leaving one (or half) to decoding.

    Actors holding every CPU would starve the decode tasks and the job would hang.
    """
    spare = max(cluster_cpus - 1, cluster_cpus / 2)
    return min(1.0, spare / workers)


def inference_dataset(
    records: pd.DataFrame,
    bundle: Path,
    workers: int,
    gpu: bool,
    batch_size: int,
    all_probabilities: bool,
) -> ray.data.Dataset:
    """path, chunk -> decode (tasks, per-file errors) -> model (actor pool) -> output rows."""
    spec = PreprocessSpec.load(bundle / PREPROCESS_FILE)
    cluster_cpus = ray.cluster_resources().get("CPU", 1.0)
    if gpu and not ray.cluster_resources().get("GPU"):
        print("warning: --gpu, but the Ray cluster has no GPU (yet): the model waits for one")
    return decode_dataset(records, spec).map_batches(
        Predictor,
        fn_constructor_kwargs={
            "bundle_path": str(bundle),
            "threads": max(1, int(cluster_cpus // workers)),
            "all_probabilities": all_probabilities,
        },
        compute=ray.data.ActorPoolStrategy(size=workers),
        batch_size=batch_size,
        num_cpus=cpus_per_actor(workers, cluster_cpus),
        num_gpus=1 if gpu else 0,
        # A model actor that dies is restarted and its batch retried: Ray Data's actor
        # pools default to max_restarts=-1 and max_task_retries=-1 (2.60 deprecates
        # passing them, as **ray_remote_args or ray_remote_args_fn alike).
    )


def predict_chunks(
    paths: list[str],
    todo: list[tuple[int, int, int]],
    directory: Path,
    bundle: Path,
    num_genres: int,
    workers: int,
    gpu: bool,
    batch_size: int,
    all_probabilities: bool,
) -> None:
    """Run the pipeline over the chunks in `todo` (index, start, stop), committing each."""
    records = pd.DataFrame(
        {
            "path": [path for _, start, stop in todo for path in paths[start:stop]],
            "chunk": [chunk for chunk, start, stop in todo for _ in range(start, stop)],
        }
    )
    writer = ChunkWriter(
        directory,
        {chunk: stop - start for chunk, start, stop in todo},
        output_schema(num_genres, all_probabilities),
    )
    dataset = inference_dataset(records, bundle, workers, gpu, batch_size, all_probabilities)
    # closing() shuts the executor and its actors down at once if a commit fails.
    with (
        all_cpus_to_one_operator(),
        contextlib.closing(
            iter(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
        ) as batches,
    ):
        for table in batches:
            writer.add(table)
    writer.check_complete()


class ChunkWriter:
    """Collects output rows per chunk and commits each chunk once all its rows arrived.

    Rows of a chunk come in several batches and in any order; sorting by path restores
    the input order, since chunks are slices of the sorted list.
    """

    def __init__(self, directory: Path, sizes: dict[int, int], schema: pa.Schema) -> None:
        self.directory = directory
        self.sizes = sizes
        self.schema = schema
        self.pending: dict[int, list[pa.Table]] = {}
        self.rows_done = 0
        self.started = time.perf_counter()

    def add(self, table: pa.Table) -> None:
        chunks = table.column("chunk").to_numpy()
        for chunk in np.unique(chunks):
            self.pending.setdefault(int(chunk), []).append(table.filter(pa.array(chunks == chunk)))
            if sum(len(part) for part in self.pending[int(chunk)]) == self.sizes[int(chunk)]:
                self.commit(int(chunk))

    def commit(self, chunk: int) -> None:
        rows = pa.concat_tables(self.pending.pop(chunk)).sort_by("path")
        commit_part(rows.select(self.schema.names).cast(self.schema), self.directory, chunk)
        self.rows_done += len(rows)
        elapsed = time.perf_counter() - self.started
        print(
            f"committed {part_name(chunk)}: {self.rows_done}/{sum(self.sizes.values())} files "
            f"this run, {self.rows_done / elapsed:.1f} img/s",
            flush=True,
        )

    def check_complete(self) -> None:
        """Every chunk must have been committed: a missing row would be a silent loss."""
        left = sorted(set(self.sizes) - finished_chunks(self.directory))
        if left:
            raise PosterRayError(
                f"the pipeline ended with {len(left)} chunks incomplete (first: "
                f"{part_name(left[0])}); rerun the same command to retry them"
            )


# ---------------------------------------------------------------- the job


def run_inference(
    bundle: Path,
    source: str,
    output: Path,
    workers: int = 1,
    gpu: bool = False,
    batch_size: int = 64,
    all_probabilities: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    num_cpus: int | None = None,
) -> dict:
    """Predict every input file into `output`, skipping chunks an earlier run committed.

    Returns the summary, also written to `output/_summary.json`. Ray starts only when
    there is work left, so rerunning a finished job costs a directory listing.
    """
    started = time.perf_counter()
    if min(workers, batch_size, chunk_size) < 1:
        raise PosterRayError("--workers, --batch-size and the chunk size must be at least 1")
    bundle, output = Path(bundle), Path(output)
    paths = resolve_inputs(source)
    info = verified_bundle_info(bundle)
    claim_output_dir(
        output,
        job_record(source, paths, bundle, info["content_hash"], chunk_size, all_probabilities),
    )
    bounds = chunk_bounds(len(paths), chunk_size)
    done = finished_chunks(output)
    todo = [(chunk, start, stop) for chunk, (start, stop) in enumerate(bounds) if chunk not in done]
    print(
        f"{len(paths)} files in {len(bounds)} chunks: {len(bounds) - len(todo)} done before, "
        f"{len(todo)} to run",
        flush=True,
    )
    if todo:
        init_ray(num_cpus)
        predict_chunks(
            paths,
            todo,
            output,
            bundle,
            info["num_genres"],
            workers,
            gpu,
            batch_size,
            all_probabilities,
        )
    processed = sum(stop - start for _, start, stop in todo)
    summary = summarize(output, len(bounds), processed, time.perf_counter() - started)
    write_json_atomically(output / SUMMARY_FILE, summary)
    return summary


def verified_bundle_info(bundle: Path) -> dict:
    """bundle.json, once the bundle's files are checked against its content hash.

    Each actor checks again when it loads the model; checking here, without TensorFlow,
    turns a bad bundle into one clear line before any worker starts.
    """
    info = bundle_info(bundle)
    try:
        unchanged = content_hash(bundle) == info.get("content_hash")
    except FileNotFoundError as error:
        missing = Path(error.filename).name
        raise PosterRayError(f"{bundle}: incomplete model bundle: {missing} is missing") from None
    if not unchanged:
        raise PosterRayError(
            f"{bundle}: the bundle was modified after it was written (content hash mismatch)"
        )
    return info


def summarize(directory: Path, num_chunks: int, processed: int, wall_s: float) -> dict:
    """Counts over the whole output (this run and earlier ones), speed of this run."""
    statuses = np.concatenate(
        [
            pq.read_table(directory / part_name(chunk), columns=["status"])
            .column("status")
            .to_numpy(zero_copy_only=False)
            for chunk in range(num_chunks)
        ]
    )
    ok = int((statuses == "ok").sum())
    return {
        "output": str(directory),
        "files": len(statuses),
        "ok": ok,
        "errors": len(statuses) - ok,
        "processed": processed,
        "skipped": len(statuses) - processed,
        "parts": num_chunks,
        "wall_s": round(wall_s, 1),
        "images_per_s": round(processed / wall_s, 1),
    }


def format_summary(summary: dict) -> str:
    return (
        f"{summary['files']} files: {summary['ok']} ok, {summary['errors']} errors, "
        f"in {summary['parts']} parts under {summary['output']}\n"
        f"this run: {summary['processed']} processed ({summary['skipped']} done before) in "
        f"{summary['wall_s']} s, {summary['images_per_s']} img/s"
    )
