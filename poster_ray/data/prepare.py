"""The prepare stage: validate, clean, split and decode the dataset into a run directory.

What it writes (manifest, genres, preprocessing, dropped rows, summary, decoded cache)
is what every later stage reads, so they all see the same genres, split and pixels.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict

import numpy as np
import pandas as pd
import ray

from poster_ray.config import ID_COLUMN, SPLITS, PreprocessSpec
from poster_ray.data.cache import DECODE_BLOCK_ROWS, DECODED_MARKER, decode_to_cache
from poster_ray.data.labels import attach_image_paths, clean_labels, read_checked_csv
from poster_ray.data.split import split_rows
from poster_ray.data.tables import read_table, write_table
from poster_ray.errors import PosterRayError, RunFailure
from poster_ray.layout import RunDir
from poster_ray.resources import available_memory
from poster_ray.runtime import init_ray, ray_logs_dir
from poster_ray.storage import Location


def prepare(
    data_dir: Location | str,
    run: RunDir,
    spec: PreprocessSpec,
    seed: int,
    limit: int | None = None,
    num_cpus: int | None = None,
) -> dict:
    """Validate, clean, split and decode the dataset into `run`; return the summary.

    `seed` draws the split (and the `limit` sample). Everything that can be checked is
    checked before Ray starts or the run is touched. The new run is built beside the old
    one (`RunDir.staging`) and swapped in only once complete, so a failure or an
    interrupt leaves an existing run as it was.
    """
    if spec.image_size < 1:
        raise PosterRayError(f"--image-size must be at least 1, got {spec.image_size}")
    run.root.check_writable_folder("--out")
    started = time.perf_counter()
    data_dir = Location.of(data_dir)
    frame, genres = read_checked_csv(data_dir / "train.csv")
    records, dropped_rows = _split_usable_posters(frame, genres, data_dir / "Images", seed, limit)
    check_cache_fits(len(records), spec, run)
    fingerprint = prepared_fingerprint(records, genres, spec)
    if is_prepared(run, fingerprint, spec):
        print(f"reusing {run.root}: prepared before from the same posters and settings")
        return run.summary.read_json()

    init_ray(num_cpus)
    warn_if_local_on_a_cluster(run.root)
    staging = RunDir(run.staging)
    staging.root.remove()  # what an earlier prepare left half-built
    try:
        manifest, dropped = build_prepared_run(staging, records, dropped_rows, genres, spec)
        summary = summarize_prepare(frame, manifest, dropped, genres, spec, data_dir, seed)
        summary["seconds"] = round(time.perf_counter() - started, 1)
        summary["fingerprint"] = fingerprint
        staging.summary.write_json(summary)
    except BaseException as error:
        staging.root.remove()
        if isinstance(error, (KeyboardInterrupt, PosterRayError)):
            raise
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise RunFailure(
            f"prepare failed ({reason}); {run.root} is as it was before; logs: {ray_logs_dir()}"
        ) from None
    swap_in(staging, run, fingerprint)
    return summary


def build_prepared_run(
    staging: RunDir,
    records: pd.DataFrame,
    dropped_rows: pd.DataFrame,
    genres: list[str],
    spec: PreprocessSpec,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decode and write a complete run into `staging`: (the manifest, the dropped rows)."""
    decode_to_cache(records, staging, spec)
    bad_files = _unreadable_posters(staging, spec)
    manifest = records[~records["id"].isin(bad_files["id"])].reset_index(drop=True)
    write_table(manifest, staging.manifest)
    staging.genres.write_json(genres)
    spec.save(staging.preprocess)
    dropped = pd.concat([dropped_rows, bad_files], ignore_index=True)
    staging.dropped.write_text(dropped.to_csv(index=False))
    return manifest, dropped


def swap_in(staging: RunDir, run: RunDir, fingerprint: str) -> None:
    """Replace what `run` holds with the complete `staging` run.

    The old files, with what the new prepare makes stale (`stale_outputs`), are moved
    aside first (the summary first of all: a run without it is not prepared, so a crash
    here means a redo, never a mixed run), the new ones moved in (the summary last),
    and only then is the old deleted."""
    old = RunDir(run.replaced)
    old.root.remove()
    for location in [run.summary, *prepared_files(run), *stale_outputs(run, fingerprint)]:
        if location.exists():
            location.move_to(old.root / location.name)
    for location in [*prepared_files(staging), staging.summary]:
        location.move_to(run.root / location.name)
    staging.root.remove()
    old.root.remove()


def prepared_files(run: RunDir) -> list[Location]:
    """What prepare writes, but its summary: the manifest, the lists and the caches."""
    return [run.manifest, run.genres, run.preprocess, run.dropped, run.caches]


def stale_outputs(run: RunDir, fingerprint: str) -> list[Location]:
    """What a new prepare makes stale: the features always (made from the caches being
    replaced); and where the posters, labels, split or size changed, the models, Ray
    runs and predictions too, which no later stage may reuse."""
    stale = [run.feature_caches]
    recorded = run.summary.read_json().get("fingerprint") if run.summary.is_file() else None
    if recorded != fingerprint:
        derived = [run.models, run.ray_storage, run.predictions, run.comparison]
        if any(location.exists() for location in derived):
            print(f"{run.root}: the posters or settings changed: models and predictions are redone")
        stale += derived
    return stale


def check_cache_fits(posters: int, spec: PreprocessSpec, run: RunDir) -> None:
    """Refuse an image size whose decoding cannot fit, before anything starts: a decode
    block must fit in a quarter of this node's available memory, and (for a local run)
    the whole cache on its disk."""
    per_poster = spec.image_size**2 * 3
    memory = available_memory() // 4
    block = per_poster * min(DECODE_BLOCK_ROWS, posters)
    needs = {"a decode block in memory": (block, memory)}
    if run.root.is_local:
        here = run.root.local_path
        existing = next(path for path in (here, *here.parents) if path.exists())
        needs["the cache on disk"] = (per_poster * posters, shutil.disk_usage(existing).free)
    for what, (size, room) in needs.items():
        if size > room:
            largest = math.isqrt(room // (size // per_poster) // 3)
            raise PosterRayError(
                f"--image-size {spec.image_size}: {what} needs {gigabytes(size)} and "
                f"{gigabytes(room)} is free: choose a size of at most {largest} px"
            )


def gigabytes(size: int) -> str:
    return f"{size / 1e9:,.1f} GB"


def prepared_fingerprint(records: pd.DataFrame, genres: list[str], spec: PreprocessSpec) -> str:
    """A hash of what a prepared run is made from: each poster's id, file, split and
    labels (so the CSV, the images found, the seed and the sample), the genre list and
    the preprocessing. Equal fingerprints make equal runs, as long as no poster file was
    replaced under its old name."""
    digest = hashlib.sha256()
    digest.update(json.dumps([genres, asdict(spec)]).encode())
    digest.update(records[["id", "path", "split"]].to_csv(index=False).encode())
    digest.update(np.stack(records["labels"].to_numpy()).tobytes() if len(records) else b"")
    return digest.hexdigest()


def is_prepared(run: RunDir, fingerprint: str, spec: PreprocessSpec) -> bool:
    """Whether `run` holds a complete prepare of these inputs: its summary (written last)
    says so, and the decoded cache at the run's size is complete."""
    if not run.summary.is_file() or not (run.cache(spec.image_size) / DECODED_MARKER).is_file():
        return False
    return run.summary.read_json().get("fingerprint") == fingerprint


def _split_usable_posters(
    frame: pd.DataFrame, genres: list[str], images_dir: Location, seed: int, limit: int | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(posters with id, path, split and labels; the rows dropped on the way and why)."""
    kept, dropped_rows = clean_labels(frame, genres)
    records, missing = attach_image_paths(kept, images_dir)
    if len(kept) and not len(records):
        raise PosterRayError(
            f"{images_dir}: none of the {len(kept)} posters of the CSV is there "
            "(expected <Id>.jpg files)"
        )
    if limit is not None and limit < len(records):
        records = records.sample(n=limit, random_state=seed).reset_index(drop=True)
    labels = records[genres].to_numpy(dtype=np.uint8)
    posters = pd.DataFrame(
        {
            "id": records[ID_COLUMN],
            "path": records["path"],
            "split": split_rows(labels, seed),
            "labels": list(labels),
        }
    )
    return posters, pd.concat([dropped_rows, missing], ignore_index=True)


def _unreadable_posters(run: RunDir, spec: PreprocessSpec) -> pd.DataFrame:
    """The decoded cache's failures as dropped rows: id, no CSV line, the decode error."""
    errors = read_table(run.cache(spec.image_size), columns=["id", "error"])
    bad = errors[errors["error"] != ""]
    return pd.DataFrame({"id": bad["id"], "line": -1, "reason": "unreadable: " + bad["error"]})


def warn_if_local_on_a_cluster(root: Location) -> None:
    """Every node writes its part of the cache: on several nodes, a run directory on
    one node's own disk would be scattered."""
    nodes = [node for node in ray.nodes() if node["Alive"]]
    if root.is_local and len(nodes) > 1:
        print(
            f"warning: {root} is a local path and the Ray cluster has {len(nodes)} nodes: "
            "it must be a mount every node shares, or use an s3:// or gs:// run directory"
        )


def summarize_prepare(
    frame: pd.DataFrame,
    manifest: pd.DataFrame,
    dropped: pd.DataFrame,
    genres: list[str],
    spec: PreprocessSpec,
    data_dir: Location,
    seed: int,
) -> dict:
    """What prepare kept and dropped and why, and the genre counts of each split."""
    labels = (
        np.stack(manifest["labels"].to_numpy()) if len(manifest) else np.zeros((0, len(genres)))
    )
    splits = {}
    for split in SPLITS:
        in_split = (manifest["split"] == split).to_numpy()
        counts = labels[in_split].sum(axis=0).astype(int)
        splits[split] = {
            "posters": int(in_split.sum()),
            "genre_counts": dict(zip(genres, counts.tolist(), strict=True)),
        }
    ids_per_split = manifest.groupby("id")["split"].nunique()
    return {
        "data_dir": str(data_dir),
        "csv_rows": len(frame),
        "kept": len(manifest),
        "dropped": {
            reason: int(n)
            for reason, n in dropped["reason"].str.split(":").str[0].value_counts().items()
        },
        "bad_files": dropped[dropped["reason"].str.startswith("unreadable")]["id"].tolist(),
        "genres": genres,
        "num_genres": len(genres),
        "image_size": spec.image_size,
        "seed": seed,
        "splits": splits,
        "ids_in_two_splits": int((ids_per_split > 1).sum()),
    }


def format_prepare_summary(summary: dict) -> str:
    """A human-readable view of the prepare summary."""
    lines = [
        f"data:     {summary['data_dir']} ({summary['csv_rows']} CSV rows)",
        f"kept:     {summary['kept']} posters, {summary['num_genres']} genres, "
        f"{summary['image_size']}x{summary['image_size']} px",
        "dropped:  "
        + (", ".join(f"{n} {why}" for why, n in summary["dropped"].items()) or "nothing"),
        "splits:   "
        + ", ".join(f"{name} {info['posters']}" for name, info in summary["splits"].items())
        + f" (ids in two splits: {summary['ids_in_two_splits']})",
    ]
    if summary["bad_files"]:
        lines.append(f"bad files: {', '.join(summary['bad_files'][:10])}")
    lines.append("")
    lines.append(f"{'genre':<12}" + "".join(f"{name:>8}" for name in summary["splits"]))
    for genre in summary["genres"]:
        counts = [info["genre_counts"][genre] for info in summary["splits"].values()]
        lines.append(f"{genre:<12}" + "".join(f"{n:>8}" for n in counts))
    return "\n".join(lines)
