"""Model bundles: everything inference needs, in one directory that checks itself.

A bundle keeps the model beside the genre names, the preprocessing spec and the
per-genre thresholds calibrated for it, so a prediction can never pair a model with
the wrong vocabulary, image size or cut-offs. A content hash over those files, recorded
in ``bundle.json``, catches any later edit.

Layout::

    model.keras       the tf-keras model (uint8 pixels in, one sigmoid per genre out)
    genres.json       the genre names, in the model's output order
    preprocess.json   PreprocessSpec: how a poster file becomes a model input
    thresholds.json   one decision threshold per genre
    bundle.json       model name, training config, metrics, the threshold policy that set
                      the thresholds (poster_ray.thresholds), created, content_hash, files
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from poster_ray.config import PreprocessSpec
from poster_ray.errors import PosterRayError
from poster_ray.layout import MODEL_FILE
from poster_ray.storage import Location

if TYPE_CHECKING:  # TensorFlow is imported only when a model is actually loaded.
    from poster_ray.tf_import import keras

GENRES_FILE = "genres.json"
PREPROCESS_FILE = "preprocess.json"
THRESHOLDS_FILE = "thresholds.json"
INFO_FILE = "bundle.json"
# The files the content hash covers, in hashing order.
HASHED_FILES = (MODEL_FILE, GENRES_FILE, PREPROCESS_FILE, THRESHOLDS_FILE)
FORMAT_VERSION = 1
# How a user gets a bundle written again: the export step ends training and tuning.
REEXPORT_HINT = (
    "rerun the `poster-ray train` (or `tune`) command that made the model: a finished run "
    "trains nothing more and exports the model and its bundle again"
)


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle, ready for inference."""

    model: keras.Model
    genres: list[str]
    spec: PreprocessSpec
    thresholds: np.ndarray
    info: dict
    path: Location


def content_hash(directory: str | os.PathLike | Location) -> str:
    """sha256 over the hashed files, each preceded by its name and size.

    Names and sizes make the hash unambiguous: bytes moved from one file to the next
    change it.
    """
    digest = hashlib.sha256()
    for name in HASHED_FILES:
        content = (Location.of(directory) / name).read_bytes()
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def write_bundle(
    out_dir: Location,
    model_file: Location,
    genres: list[str],
    spec: PreprocessSpec,
    thresholds: np.ndarray | list[float],
    train_config: dict,
    metrics: dict,
    threshold_policy: dict | None = None,
) -> Location:
    """Write a bundle to ``out_dir``, replacing any bundle already there.

    Everything is written into a local staging directory and committed at the end
    (renamed into place, or uploaded), so a crash never leaves a half-written bundle.
    """
    out_dir, model_file = Location.of(out_dir), Location.of(model_file)
    thresholds = [float(value) for value in np.asarray(thresholds, dtype=float)]
    if len(thresholds) != len(genres):
        raise PosterRayError(f"{len(thresholds)} thresholds for {len(genres)} genres")
    with out_dir.written_locally() as staging:
        staging.mkdir()
        (staging / MODEL_FILE).write_bytes(model_file.read_bytes())
        write_json(staging / GENRES_FILE, list(genres))
        write_json(staging / PREPROCESS_FILE, asdict(spec))
        write_json(staging / THRESHOLDS_FILE, thresholds)
        info = {
            "format_version": FORMAT_VERSION,
            "model": train_config.get("model"),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "num_genres": len(genres),
            "image_size": spec.image_size,
            "train_config": train_config,
            "metrics": metrics,
            "threshold_policy": threshold_policy,
            "content_hash": content_hash(staging),
            "files": [*HASHED_FILES, INFO_FILE],
        }
        write_json(staging / INFO_FILE, info)
    return out_dir


def write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def bundle_info(path: str | os.PathLike | Location) -> dict:
    """The bundle's ``bundle.json``, read without importing TensorFlow."""
    info_file = Location.of(path) / INFO_FILE
    if not info_file.is_file():
        raise PosterRayError(f"{path}: not a model bundle ({INFO_FILE} is missing)")
    try:
        return info_file.read_json()
    except json.JSONDecodeError as error:
        raise PosterRayError(f"{info_file}: not valid JSON ({error})") from None


def load_bundle(path: str | os.PathLike | Location) -> Bundle:
    """Load a bundle (a folder or URI) after checking it is complete, unmodified and
    self-consistent."""
    location = Location.of(path)
    if not location.is_dir():
        raise PosterRayError(f"{path}: no model bundle there (not a directory)")
    with location.local_copy() as local:
        return load_local_bundle(local, location)


def load_local_bundle(local: Path, location: Location) -> Bundle:
    for name in (*HASHED_FILES, INFO_FILE):
        if not (local / name).is_file():
            raise PosterRayError(f"{location}: incomplete model bundle: {name} is missing")
    info = bundle_info(local)
    if content_hash(local) != info.get("content_hash"):
        raise PosterRayError(
            f"{location}: the bundle was modified after it was written (content hash "
            f"mismatch); {REEXPORT_HINT}"
        )
    genres = json.loads((local / GENRES_FILE).read_text())
    spec = PreprocessSpec(**json.loads((local / PREPROCESS_FILE).read_text()))
    thresholds = np.asarray(json.loads((local / THRESHOLDS_FILE).read_text()), dtype=float)
    if thresholds.shape != (len(genres),):
        raise PosterRayError(
            f"{location}: {THRESHOLDS_FILE} holds {thresholds.size} thresholds "
            f"but {GENRES_FILE} lists {len(genres)} genres"
        )
    model = load_safe_model(local / MODEL_FILE)
    check_model_matches(model, len(genres), spec, location)
    return Bundle(model, genres, spec, thresholds, info, location)


def load_safe_model(model_file: Path) -> keras.Model:
    """Load with Keras safe mode: a model carrying Python code (a Lambda) is refused."""
    from poster_ray import models

    try:
        return models.load_model(model_file)
    except ValueError as error:
        reason = str(error).splitlines()[0]
        raise PosterRayError(f"{model_file}: refusing to load this model: {reason}") from None


def check_model_matches(
    model: keras.Model, num_genres: int, spec: PreprocessSpec, source: Path
) -> None:
    """The model must output one score per genre and take inputs of the spec's shape."""
    outputs = model.output_shape[-1]
    if outputs != num_genres:
        raise PosterRayError(
            f"{source}: the model outputs {outputs} genres but the genre list has {num_genres}"
        )
    inputs = tuple(model.input_shape[1:])
    if inputs != spec.shape:
        raise PosterRayError(
            f"{source}: the model takes {inputs} inputs but the preprocessing spec "
            f"makes {spec.shape}"
        )
