"""Evaluate stage: score an exported model's bundle on the test split, next to trivial
baselines.

The bundle's per-genre thresholds were calibrated on the validation split (jointly, for
micro-F1) by the export step, and are applied here to the test split, so the calibrated
score is not tuned on the posters it is measured on. The result is written beside the
model: ``metrics.json``, ``report.md`` and each test poster's probabilities (ModelDir).

``metrics.json`` layout (each metrics dict as in ``poster_ray.metrics``)::

    {
        "model": str,
        "genres": [str, ...],
        "test_split": str,                  # hash of the test ids (see split_fingerprint)
        "thresholds": [float, ...],         # the bundle's, calibrated on val, per genre
        "headline": {...},                  # as returned by evaluate_model_dir, minus rows
        "test@0.5": metrics,
        "test@calibrated": metrics,
        "val@calibrated": metrics,          # in-sample for the thresholds: optimistic
        "baselines": {name: metrics, ...},  # on the test split, at 0.5
        "versus_baseline": {row: difference, ...},  # micro-F1 minus "always ..." with its
    }                                             # bootstrap interval (poster_ray.verdict)
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import pandas as pd

from poster_ray import metrics, models, reports, verdict
from poster_ray.bundle import REEXPORT_HINT, Bundle, load_bundle
from poster_ray.data.cache import read_split_arrays, train_labels
from poster_ray.data.tables import write_table
from poster_ray.errors import PosterRayError
from poster_ray.layout import ModelDir, RunDir
from poster_ray.models.views import with_test_views
from poster_ray.storage import Location
from poster_ray.tf_import import keras

MODEL_AT_HALF = "model @ 0.5"
MODEL_CALIBRATED = "model @ calibrated"


def predict_arrays(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Probabilities for uint8 images, one batch at a time, with the model actors' traced
    function (`models.inference_function`).

    Slicing here rather than in ``model.predict`` keeps Keras from copying the whole
    split into one tensor first.
    """
    infer = models.inference_function(model)
    batches = [
        infer(images[start : start + batch_size]) for start in range(0, len(images), batch_size)
    ]
    if not batches:
        return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
    return np.concatenate(batches).astype(np.float32)


def predict_split(
    model: keras.Model, run: RunDir, split: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, labels, probabilities) of one split, decoded at the model's input size."""
    ids, images, labels = read_split_arrays(run, split, model.input_shape[1])
    return ids, labels, predict_arrays(model, images)


def split_fingerprint(ids: np.ndarray) -> str:
    """A hash of a split's poster ids: equal only for scores on the same posters."""
    return hashlib.sha256("\n".join(sorted(map(str, ids))).encode()).hexdigest()[:16]


def evaluate_model_dir(model_dir: str | os.PathLike | Location, run: RunDir) -> dict:
    """Score the bundle of `model_dir` (model, genres, spec, thresholds) on `run`'s test
    split, beside the baselines; write ``metrics.json`` and ``report.md`` beside it.

    Returns the headline numbers (see ``headline``) plus ``rows``, the metrics dicts
    that ``format_headline`` tabulates.
    """
    model_dir = ModelDir(model_dir)
    bundle = load_model_bundle(model_dir, run)
    genres, thresholds = bundle.genres, bundle.thresholds
    model = with_test_views(bundle.model, bundle.test_views)
    _, val_labels, val_prob = predict_split(model, run, "val")
    test_ids, test_labels, test_prob = predict_split(model, run, "test")
    rows = {
        MODEL_AT_HALF: metrics.classification_metrics(test_labels, test_prob, 0.5, genres),
        MODEL_CALIBRATED: metrics.classification_metrics(
            test_labels, test_prob, thresholds, genres
        ),
    }
    train = train_labels(run)
    baselines = metrics.baseline_metrics(train, test_labels, genres)
    versus = versus_baseline(train, test_labels, test_prob, thresholds)
    validation = metrics.classification_metrics(val_labels, val_prob, thresholds, genres)
    summary = headline(model_dir.name, rows, baselines, validation, versus[MODEL_CALIBRATED])

    model_dir.metrics.write_json(
        {
            "model": model_dir.name,
            "test_split": split_fingerprint(test_ids),
            "genres": genres,
            "thresholds": thresholds.tolist(),
            "headline": summary,
            "test@0.5": rows[MODEL_AT_HALF],
            "test@calibrated": rows[MODEL_CALIBRATED],
            "val@calibrated": validation,
            "baselines": baselines,
            "versus_baseline": versus,
        },
    )
    write_report(model_dir, rows, baselines, genres)
    write_test_predictions(model_dir, test_ids, test_prob)
    return {**summary, "rows": {**rows, **baselines}}


def versus_baseline(
    train: np.ndarray, test_labels: np.ndarray, test_prob: np.ndarray, thresholds: np.ndarray
) -> dict[str, dict]:
    """Each model row's micro-F1 minus that of always answering the most frequent training
    genres, on the same test posters, with its paired bootstrap interval."""
    baseline = metrics.constant_top_k_baseline(train, len(test_labels))
    return {
        row: verdict.micro_f1_difference(test_labels, test_prob >= cutoffs, baseline)
        for row, cutoffs in ((MODEL_AT_HALF, 0.5), (MODEL_CALIBRATED, thresholds))
    }


def load_model_bundle(model_dir: ModelDir, run: RunDir) -> Bundle:
    """The model directory's bundle, which must name the run's genres."""
    if not model_dir.bundle.is_dir():
        raise PosterRayError(
            f"{model_dir.root}: no bundle/ beside the model (the export step writes it); "
            f"{REEXPORT_HINT}"
        )
    bundle = load_bundle(model_dir.bundle)
    if bundle.genres != run.load_genres():
        raise PosterRayError(
            f"{model_dir.bundle}: the bundle's {len(bundle.genres)} genres are not the "
            f"{len(run.load_genres())} of {run.root}"
        )
    return bundle


def write_report(
    model_dir: ModelDir, rows: dict[str, dict], baselines: dict[str, dict], genres: list[str]
) -> None:
    """``report.md``: what was evaluated and how it trained, the tables and the curves."""
    curves = [path.name for path in model_dir.curves()]
    report = reports.markdown_report(rows, baselines, genres, curves, detail=MODEL_CALIBRATED)
    model_dir.report.write_text(
        reports.add_model_section(
            report,
            model_dir.name,
            read_json(model_dir.history, default=[]),
            read_json(model_dir.train_config, default={}),
        )
    )


def write_test_predictions(model_dir: ModelDir, ids: np.ndarray, probabilities: np.ndarray) -> None:
    """Each test poster's probabilities, so the run report can show the posters a model
    gets most wrong and most right without loading it again."""
    frame = pd.DataFrame({"id": ids.astype(str), "probabilities": list(probabilities)})
    write_table(frame, model_dir.test_predictions)


def headline(
    name: str, rows: dict[str, dict], baselines: dict[str, dict], validation: dict, versus: dict
) -> dict:
    """The numbers that say whether the model is any use: micro-F1 vs "always Drama,
    Comedy" on the test split, the difference with its interval and the verdict it
    allows; and validation micro-F1, to choose between models."""
    constant = constant_baseline(baselines)
    calibrated_f1 = rows[MODEL_CALIBRATED]["micro"]["f1"]
    baseline_f1 = baselines[constant]["micro"]["f1"]
    return {
        "model": name,
        "test_posters": rows[MODEL_AT_HALF]["n_samples"],
        "micro_f1@0.5": rows[MODEL_AT_HALF]["micro"]["f1"],
        "micro_f1@calibrated": calibrated_f1,
        "baseline": constant,
        "baseline_micro_f1": baseline_f1,
        "versus_baseline": versus,
        "beats_baseline": versus["verdict"] == verdict.BEATS,
        "val_micro_f1": validation["micro"]["f1"],
    }


def format_headline(result: dict, table: bool = True) -> str:
    """A short console summary: the headline table and the verdict against the baseline."""
    return (
        (reports.comparison_table(result["rows"]) + "\n" if table else "")
        + f"{result['model']}: micro-F1 {result['micro_f1@calibrated']:.3f} at calibrated "
        f"thresholds ({result['micro_f1@0.5']:.3f} at 0.5); {format_verdict(result)}"
    )


def format_verdict(headline: dict) -> str:
    """The verdict and the interval it rests on: "beats 'always Drama, Comedy' (0.419):
    +0.060 [+0.023, +0.095], 95% interval over 229 test posters"."""
    versus = headline["versus_baseline"]
    return (
        f"{versus['verdict']} '{headline['baseline']}' ({headline['baseline_micro_f1']:.3f}): "
        f"{verdict.format_interval(versus)}, {versus['confidence']:.0%} interval over "
        f"{versus['posters']} test posters"
    )


def compare_models(paths: list[str | os.PathLike | Location]) -> str:
    """One Markdown table of evaluated models, each at its calibrated thresholds and at
    0.5, beside the trivial baselines: the seed report's model comparison.

    `paths` are model directories or whole runs (all their evaluated models). Models
    must have been scored on the same test posters, or the table would mislead.
    """
    evaluated = {
        model_dir: read_json(model_dir.metrics, {}) for model_dir in evaluated_models(paths)
    }
    splits = {model_dir: result.get("test_split") for model_dir, result in evaluated.items()}
    if len(set(splits.values())) > 1:
        listing = ", ".join(f"{path.root} ({split})" for path, split in splits.items())
        raise PosterRayError(f"these models were tested on different test splits: {listing}")
    labels = model_labels(list(evaluated))
    rows, differences = {}, {}
    for model_dir, result in evaluated.items():
        for row, suffix in ((MODEL_CALIBRATED, "calibrated"), (MODEL_AT_HALF, "0.5")):
            name = f"{labels[model_dir]} @ {suffix}"
            rows[name] = result[f"test@{suffix}"]
            if row in result.get("versus_baseline", {}):
                differences[name] = result["versus_baseline"][row]
    baselines = next(iter(evaluated.values()))["baselines"]
    rows.update(baselines)
    return reports.comparison_table(rows, differences, constant_baseline(baselines))


def constant_baseline(baselines: dict[str, dict]) -> str:
    """The name of the baseline every verdict is against: "always Drama, Comedy" here."""
    return next(name for name in baselines if name.startswith("always "))


def evaluated_models(paths: list[str | os.PathLike | Location]) -> list[ModelDir]:
    """The evaluated model directories that `paths` name, directly or as whole runs."""
    found = []
    for path in paths:
        model_dir, run = ModelDir(path), RunDir(path)
        if model_dir.metrics.is_file():
            found.append(model_dir)
        elif run.manifest.is_file():
            in_run = [model for model in run.model_dirs() if model.metrics.is_file()]
            if not in_run:
                raise PosterRayError(f"{run.root}: no evaluated model under {run.models}")
            found.extend(in_run)
        else:
            raise PosterRayError(
                f"{run.root}: neither an evaluated model (no {model_dir.metrics.name}: run "
                "`poster-ray evaluate`) nor a prepared run"
            )
    return list(dict.fromkeys(found))


def model_labels(model_dirs: list[ModelDir]) -> dict[ModelDir, str]:
    """Each model's directory name, or run/name where two runs share a model name."""
    names = [model_dir.name for model_dir in model_dirs]
    return {
        model_dir: model_dir.name
        if names.count(model_dir.name) == 1
        else f"{model_dir.root.parent.parent.name}/{model_dir.name}"
        for model_dir in model_dirs
    }


def read_json(location: Location, default: Any) -> Any:
    """A JSON file's value, or ``default`` when a model dir lacks that file."""
    return location.read_json() if location.is_file() else default
