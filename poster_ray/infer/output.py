"""The output folder's protocol: what makes a job resumable and idempotent, on any storage.

Chunk ``i`` of the input list becomes ``DIR/part-<i:06d>.parquet``, committed whole by
`Location.write_bytes` (written beside and renamed on a filesystem; one PUT on a bucket),
so a part file that exists is complete. A rerun skips committed chunks; rerunning a
finished job does nothing. ``DIR/_job.json`` records what makes two runs the same job
(the inputs' sha256, the bundle's content hash, the chunk size, the columns), so a rerun
with another input or bundle into the same DIR fails instead of mixing results.
"""

from __future__ import annotations

import hashlib
import re

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from poster_ray.errors import PosterRayError
from poster_ray.storage import Location

JOB_FILE = "_job.json"
SUMMARY_FILE = "_summary.json"
PART_NAME = re.compile(r"^part-(\d{6})\.parquet$")
# A commit killed between write and rename leaves `.part-NNNNNN.parquet.<uuid>.tmp`.
STAGING_NAME = re.compile(r"^\.part-\d{6}\.parquet\..*\.tmp$")
# What makes two runs the same job, and how to name each in an error message.
JOB_KEYS = {
    "inputs_sha256": "the input list",
    "bundle_hash": "the bundle",
    "chunk_size": "the chunk size",
    "all_probabilities": "--all-probabilities",
    "views": "--views",
}
# What a record written before a key existed held.
JOB_KEY_DEFAULTS = {"views": 1}


def part_name(chunk: int) -> str:
    return f"part-{chunk:06d}.parquet"


def job_record(
    source: str,
    paths: list[str],
    bundle: str,
    bundle_hash: str,
    chunk_size: int,
    all_probabilities: bool,
    views: int = 1,
) -> dict:
    """What _job.json holds: the JOB_KEYS that identify the job, plus notes for humans."""
    return {
        "inputs_sha256": hashlib.sha256("\0".join(paths).encode()).hexdigest(),
        "bundle_hash": bundle_hash,
        "chunk_size": chunk_size,
        "all_probabilities": all_probabilities,
        "views": views,
        "input": source,
        "files": len(paths),
        "bundle": bundle,
    }


class OutputFolder:
    """DIR of one inference job: its record, committed parts and summary."""

    def __init__(self, location: str | Location) -> None:
        self.location = Location.of(location)

    def __str__(self) -> str:
        return self.location.uri

    def finished_chunks(self) -> set[int]:
        """Chunks whose part file is committed."""
        return {
            int(match[1])
            for child in self.location.iterdir()
            if (match := PART_NAME.match(child.name))
        }

    def claim(self, job: dict) -> None:
        """Record the job in DIR/_job.json, or check that DIR holds this same job's parts."""
        record = self.location / JOB_FILE
        if record.is_file():
            recorded = {**JOB_KEY_DEFAULTS, **record.read_json()}
            changed = [name for key, name in JOB_KEYS.items() if recorded.get(key) != job[key]]
            if changed:
                raise PosterRayError(
                    f"{self} holds results of another job ({', '.join(changed)} differ); "
                    "write to a new --output folder or delete this one"
                )
        elif self.finished_chunks():
            raise PosterRayError(
                f"{self} holds part files but no {JOB_FILE}: not a poster-ray infer output; "
                "write to a new --output folder"
            )
        else:
            record.write_json(job)
        for child in self.location.iterdir():  # what a killed run left half-written
            if STAGING_NAME.match(child.name):
                child.remove()

    def commit_part(self, table: pa.Table, chunk: int) -> None:
        """Serialise one chunk's rows, then commit them as its part file in one write."""
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        (self.location / part_name(chunk)).write_bytes(buffer.getvalue().to_pybytes())

    def statuses(self, num_chunks: int) -> pa.ChunkedArray:
        """The `status` column of every part, read in parallel (one request per part)."""
        parts = [(self.location / part_name(chunk)).path for chunk in range(num_chunks)]
        dataset = pads.dataset(parts, filesystem=self.location.fs, format="parquet")
        return dataset.to_table(columns=["status"]).column("status")

    def write_summary(self, summary: dict) -> None:
        (self.location / SUMMARY_FILE).write_json(summary)
