"""Model bundles: everything inference needs, in one directory that checks itself.

A bundle keeps the model beside the genre names, the preprocessing spec and the
per-genre thresholds it was evaluated with, so a prediction can never pair a model with
the wrong vocabulary, image size or cut-offs. A content hash over those files, recorded
in ``bundle.json``, catches any later edit.

Layout::

    model.keras       the tf-keras model (uint8 pixels in, one sigmoid per genre out)
    genres.json       the genre names, in the model's output order
    preprocess.json   PreprocessSpec: how a poster file becomes a model input
    thresholds.json   one decision threshold per genre
    bundle.json       model name, training config, metrics, created, content_hash, files
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from poster_ray.config import PreprocessSpec
from poster_ray.errors import PosterRayError

if TYPE_CHECKING:  # TensorFlow is imported only when a model is actually loaded.
    from poster_ray.tf_import import keras

MODEL_FILE = "model.keras"
GENRES_FILE = "genres.json"
PREPROCESS_FILE = "preprocess.json"
THRESHOLDS_FILE = "thresholds.json"
INFO_FILE = "bundle.json"
# The files the content hash covers, in hashing order.
HASHED_FILES = (MODEL_FILE, GENRES_FILE, PREPROCESS_FILE, THRESHOLDS_FILE)
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle, ready for inference."""

    model: keras.Model
    genres: list[str]
    spec: PreprocessSpec
    thresholds: np.ndarray
    info: dict
    path: Path


def content_hash(directory: Path) -> str:
    """sha256 over the hashed files, each preceded by its name and size.

    Names and sizes make the hash unambiguous: bytes moved from one file to the next
    change it.
    """
    digest = hashlib.sha256()
    for name in HASHED_FILES:
        path = directory / name
        digest.update(f"{name}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def write_bundle(
    out_dir: Path,
    model_file: Path,
    genres: list[str],
    spec: PreprocessSpec,
    thresholds: np.ndarray | list[float],
    train_config: dict,
    metrics: dict,
) -> Path:
    """Write a bundle to ``out_dir``, replacing any bundle already there.

    Everything is written into a temporary directory beside ``out_dir`` and renamed into
    place at the end, so a crash never leaves a half-written bundle behind.
    """
    out_dir = Path(out_dir)
    thresholds = [float(value) for value in np.asarray(thresholds, dtype=float)]
    if len(thresholds) != len(genres):
        raise PosterRayError(f"{len(thresholds)} thresholds for {len(genres)} genres")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.new-", dir=out_dir.parent))
    try:
        shutil.copyfile(model_file, staging / MODEL_FILE)
        write_json(staging / GENRES_FILE, list(genres))
        spec.save(staging / PREPROCESS_FILE)
        write_json(staging / THRESHOLDS_FILE, thresholds)
        info = {
            "format_version": FORMAT_VERSION,
            "model": train_config.get("model"),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "num_genres": len(genres),
            "image_size": spec.image_size,
            "train_config": train_config,
            "metrics": metrics,
            "content_hash": content_hash(staging),
            "files": [*HASHED_FILES, INFO_FILE],
        }
        write_json(staging / INFO_FILE, info)
        replace_directory(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def replace_directory(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an old ``target`` is moved aside first, then deleted."""
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        target.rename(old / target.name)
        new.rename(target)
        shutil.rmtree(old)
    else:
        new.rename(target)


def write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def bundle_info(path: Path) -> dict:
    """The bundle's ``bundle.json``, read without importing TensorFlow."""
    info_file = Path(path) / INFO_FILE
    if not info_file.is_file():
        raise PosterRayError(f"{path}: not a model bundle ({INFO_FILE} is missing)")
    try:
        return json.loads(info_file.read_text())
    except json.JSONDecodeError as error:
        raise PosterRayError(f"{info_file}: not valid JSON ({error})") from None


def load_bundle(path: Path) -> Bundle:
    """Load a bundle after checking it is complete, unmodified and self-consistent."""
    path = Path(path)
    if not path.is_dir():
        raise PosterRayError(f"{path}: no model bundle there (not a directory)")
    for name in (*HASHED_FILES, INFO_FILE):
        if not (path / name).is_file():
            raise PosterRayError(f"{path}: incomplete model bundle: {name} is missing")
    info = bundle_info(path)
    if content_hash(path) != info.get("content_hash"):
        raise PosterRayError(
            f"{path}: the bundle was modified after it was written (content hash mismatch); "
            "write it again with `poster-ray evaluate`"
        )
    genres = json.loads((path / GENRES_FILE).read_text())
    spec = PreprocessSpec.load(path / PREPROCESS_FILE)
    thresholds = np.asarray(json.loads((path / THRESHOLDS_FILE).read_text()), dtype=float)
    if thresholds.shape != (len(genres),):
        raise PosterRayError(
            f"{path}: {THRESHOLDS_FILE} holds {thresholds.size} thresholds "
            f"but {GENRES_FILE} lists {len(genres)} genres"
        )
    model = load_safe_model(path / MODEL_FILE)
    check_model_matches(model, len(genres), spec, path)
    return Bundle(model, genres, spec, thresholds, info, path)


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
