"""Model bundles: everything inference needs, in one directory that checks itself.

A bundle keeps the model beside the genre names, the preprocessing spec and the
per-genre thresholds calibrated for it, so a prediction can never pair a model with
the wrong vocabulary, image size or cut-offs. A content hash over every file (the
description in ``bundle.json`` too), recorded there, catches any later edit, and each
field read from the bundle is checked.

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
import io
import json
import os
import zipfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from poster_ray.config import VIEW_COUNTS, PreprocessSpec, checked_genres
from poster_ray.errors import PosterRayError, RunFailure
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
# The field of bundle.json holding the content hash (which covers the other fields).
HASH_KEY = "content_hash"
# 2: the content hash covers bundle.json too.
FORMAT_VERSION = 2
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

    @property
    def test_views(self) -> int:
        """The views whose predictions evaluation averages (TrainConfig.test_views)."""
        return self.info["train_config"].get("test_views", 1)


def content_hash(directory: str | os.PathLike | Location) -> str:
    """sha256 over every file of the bundle: the hashed files, each preceded by its name
    and size, then the description (bundle.json without its own hash, keys sorted).

    Names and sizes make the hash unambiguous: bytes moved from one file to the next
    change it. The description is hashed too, so an edited field (say num_genres) is
    caught like an edited model.
    """
    directory = Location.of(directory)
    digest = hashlib.sha256()
    for name in HASHED_FILES:
        content = (directory / name).read_bytes()
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    description = {key: value for key, value in bundle_info(directory).items() if key != HASH_KEY}
    digest.update(f"{INFO_FILE}\0".encode() + json.dumps(description, sort_keys=True).encode())
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
            "files": [*HASHED_FILES, INFO_FILE],
        }
        write_json(staging / INFO_FILE, info)  # the description first: the hash covers it
        write_json(staging / INFO_FILE, {**info, HASH_KEY: content_hash(staging)})
    return out_dir


def write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def bundle_info(path: str | os.PathLike | Location) -> dict:
    """The bundle's ``bundle.json``, read without importing TensorFlow."""
    info_file = Location.of(path) / INFO_FILE
    if not info_file.is_file():
        raise PosterRayError(f"{path}: not a model bundle ({INFO_FILE} is missing)")
    info = info_file.read_json()
    if not isinstance(info, dict):
        raise RunFailure(f"{info_file}: not a bundle description (a JSON object); {REEXPORT_HINT}")
    return info


def verified_info(path: str | os.PathLike | Location) -> dict:
    """bundle.json, once every file of the bundle is checked, without TensorFlow: all
    present, unmodified (the content hash), each field consistent with the files, and a
    model archive that is whole and carries no Python code. Inference runs this on the
    driver, so a bad bundle is one line before any worker starts."""
    location = Location.of(path)
    for name in (*HASHED_FILES, INFO_FILE):
        if not (location / name).is_file():
            raise PosterRayError(f"{location}: incomplete model bundle: {name} is missing")
    info = bundle_info(location)
    if info.get("format_version") != FORMAT_VERSION:
        raise RunFailure(
            f"{location}: a bundle of format {info.get('format_version')!r}, this poster-ray "
            f"reads format {FORMAT_VERSION}; {REEXPORT_HINT}"
        )
    if content_hash(location) != info.get(HASH_KEY):
        raise RunFailure(
            f"{location}: the bundle was modified after it was written (content hash "
            f"mismatch); {REEXPORT_HINT}"
        )
    genres = checked_genres((location / GENRES_FILE).read_json(), location / GENRES_FILE)
    spec = PreprocessSpec.checked((location / PREPROCESS_FILE).read_json(), location)
    check_description(info, genres, spec, location)
    check_thresholds((location / THRESHOLDS_FILE).read_json(), genres, location)
    check_model_archive((location / MODEL_FILE).read_bytes(), location / MODEL_FILE)
    return info


def check_description(
    info: dict, genres: list[str], spec: PreprocessSpec, source: Location
) -> None:
    """Each field of bundle.json that a stage reads agrees with the bundle's files."""
    expected = {
        "num_genres": len(genres),
        "image_size": spec.image_size,
        "files": [*HASHED_FILES, INFO_FILE],
    }
    for key, value in expected.items():
        if info.get(key) != value:
            raise RunFailure(
                f"{source / INFO_FILE}: {key} is {info.get(key)!r}, the bundle's files say "
                f"{value!r}; {REEXPORT_HINT}"
            )
    for key in ("train_config", "metrics"):
        if not isinstance(info.get(key), dict):
            raise RunFailure(f"{source / INFO_FILE}: {key} is not an object; {REEXPORT_HINT}")
    views = info["train_config"].get("test_views", 1)
    if views not in VIEW_COUNTS:
        raise RunFailure(
            f"{source / INFO_FILE}: test_views is {views!r}, not one of {list(VIEW_COUNTS)}; "
            f"{REEXPORT_HINT}"
        )


def check_thresholds(value: object, genres: list[str], source: Location) -> np.ndarray:
    """One finite threshold per genre (above 1: the genre never fires)."""
    try:
        thresholds = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        thresholds = np.full(0, np.nan)
    if thresholds.shape != (len(genres),):
        raise RunFailure(
            f"{source}: {THRESHOLDS_FILE} holds {thresholds.size} thresholds "
            f"but {GENRES_FILE} lists {len(genres)} genres"
        )
    if not np.isfinite(thresholds).all():
        raise RunFailure(f"{source}: {THRESHOLDS_FILE} holds a threshold that is not a number")
    return thresholds


def check_model_archive(content: bytes, source: Location) -> None:
    """The model file is a whole Keras archive whose layers carry no Python code.

    Keras' safe mode refuses a Lambda layer only as it deserializes it, in each process
    that loads the model; the archive's config.json says as much without TensorFlow."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            damaged = archive.testzip()
            config = json.loads(archive.read("config.json")) if damaged is None else None
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, UnicodeDecodeError) as error:
        damaged = str(error) or type(error).__name__
        config = None
    if config is None:
        raise RunFailure(
            f"{source}: damaged, not a Keras model archive ({damaged}); {REEXPORT_HINT}"
        )
    if "Lambda" in layer_classes(config):
        raise PosterRayError(
            f"{source}: refusing to load this model: a Lambda layer (Python code, which "
            "Keras safe mode does not run)"
        )


def layer_classes(config: object) -> set[str]:
    """Every `class_name` in a Keras model config, nested models included."""
    if isinstance(config, dict):
        found = {config["class_name"]} if isinstance(config.get("class_name"), str) else set()
        return found.union(*(layer_classes(value) for value in config.values()))
    if isinstance(config, list):
        return set().union(*(layer_classes(value) for value in config))
    return set()


def load_bundle(path: str | os.PathLike | Location) -> Bundle:
    """Load a bundle (a folder or URI) after checking it is complete, unmodified and
    self-consistent."""
    location = Location.of(path)
    if not location.is_dir():
        raise PosterRayError(f"{path}: no model bundle there (not a directory)")
    with location.local_copy() as local:
        return load_local_bundle(Location.of(local), location)


def load_local_bundle(local: Location, location: Location) -> Bundle:
    info = verified_info(local)
    genres = (local / GENRES_FILE).read_json()
    spec = PreprocessSpec.load(local / PREPROCESS_FILE)
    thresholds = np.asarray((local / THRESHOLDS_FILE).read_json(), dtype=float)
    model = load_safe_model(local.local_path / MODEL_FILE)
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
    except Exception as error:  # a whole archive Keras still cannot read
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise RunFailure(f"{model_file}: damaged model ({reason}); {REEXPORT_HINT}") from None


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
