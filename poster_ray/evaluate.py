"""Evaluate stage: score a trained model on the test split, next to trivial baselines.

Per-genre thresholds are calibrated on the validation split (jointly, for micro-F1),
then applied to the test split, so the calibrated score is not tuned on the posters it
is measured on.
The result is written beside the model: ``metrics.json``, ``report.md`` and a ``bundle/``
that ``poster-ray predict`` loads.

``metrics.json`` layout (each metrics dict as in ``poster_ray.metrics``)::

    {
        "model": str,
        "genres": [str, ...],
        "test_split": str,                  # hash of the test ids (see split_fingerprint)
        "thresholds": [float, ...],         # calibrated on val, one per genre
        "headline": {...},                  # as returned by evaluate_model_dir, minus rows
        "test@0.5": metrics,
        "test@calibrated": metrics,
        "val@calibrated": metrics,          # in-sample for the thresholds: optimistic
        "baselines": {name: metrics, ...},  # on the test split, at 0.5
    }
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

import numpy as np

from poster_ray import data, metrics, models
from poster_ray.bundle import check_model_matches, write_bundle
from poster_ray.layout import RunDir
from poster_ray.data import train_labels
from poster_ray.errors import PosterRayError
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
    ids, images, labels = data.read_split_arrays(run, split, model.input_shape[1])
    return ids, labels, predict_arrays(model, images)


def split_fingerprint(ids: np.ndarray) -> str:
    """A hash of a split's poster ids: equal only for scores on the same posters."""
    return hashlib.sha256("\n".join(sorted(map(str, ids))).encode()).hexdigest()[:16]


def evaluate_model_dir(model_dir: Location, run: RunDir) -> dict:
    """Evaluate ``model_dir/model.keras`` on ``run``; write metrics, report and bundle.

    Returns the headline numbers (see ``headline``) plus ``rows``, the metrics dicts
    that ``format_headline`` tabulates.
    """
    model_dir = Location.of(model_dir)
    model_file = model_dir / "model.keras"
    genres = run.load_genres()
    with model_file.local_copy() as path:
        model = models.load_model(path)
    # The model's own input size: a pretrained backbone's native resolution, say.
    spec = replace(run.load_spec(), image_size=model.input_shape[1])
    check_model_matches(model, len(genres), spec, model_file)
    train_config = read_json(model_dir / "train_config.json", default={})
    history = read_json(model_dir / "history.json", default=[])
    name = model_dir.name

    _, val_labels, val_prob = predict_split(model, run, "val")
    test_ids, test_labels, test_prob = predict_split(model, run, "test")
    thresholds = metrics.calibrate_micro_f1_thresholds(val_labels, val_prob)
    rows = {
        MODEL_AT_HALF: metrics.classification_metrics(test_labels, test_prob, 0.5, genres),
        MODEL_CALIBRATED: metrics.classification_metrics(
            test_labels, test_prob, thresholds, genres
        ),
    }
    baselines = metrics.baseline_metrics(train_labels(run), test_labels, genres)
    validation = metrics.classification_metrics(val_labels, val_prob, thresholds, genres)
    summary = headline(name, rows, baselines, validation)

    (model_dir / "metrics.json").write_json(
        {
            "model": name,
            "test_split": split_fingerprint(test_ids),
            "genres": genres,
            "thresholds": thresholds.tolist(),
            "headline": summary,
            "test@0.5": rows[MODEL_AT_HALF],
            "test@calibrated": rows[MODEL_CALIBRATED],
            "val@calibrated": validation,
            "baselines": baselines,
        },
    )
    curves = [path.name for path in model_dir.glob("curve_*.png")]
    report = metrics.markdown_report(rows, baselines, genres, curves, detail=MODEL_CALIBRATED)
    (model_dir / "report.md").write_text(add_model_section(report, name, history, train_config))
    bundle_config = {**train_config, "model": train_config.get("model", name), "name": name}
    write_bundle(model_dir / "bundle", model_file, genres, spec, thresholds, bundle_config, summary)
    return {**summary, "rows": {**rows, **baselines}}


def headline(
    name: str, rows: dict[str, dict], baselines: dict[str, dict], validation: dict
) -> dict:
    """The numbers that say whether the model is any use: micro-F1 vs "always Drama,
    Comedy" on the test split; and validation micro-F1, to choose between models."""
    constant = next(baseline for baseline in baselines if baseline.startswith("always "))
    calibrated_f1 = rows[MODEL_CALIBRATED]["micro"]["f1"]
    baseline_f1 = baselines[constant]["micro"]["f1"]
    return {
        "model": name,
        "test_posters": rows[MODEL_AT_HALF]["n_samples"],
        "micro_f1@0.5": rows[MODEL_AT_HALF]["micro"]["f1"],
        "micro_f1@calibrated": calibrated_f1,
        "baseline": constant,
        "baseline_micro_f1": baseline_f1,
        "beats_baseline": calibrated_f1 > baseline_f1,
        "val_micro_f1": validation["micro"]["f1"],
    }


def add_model_section(report: str, name: str, history: list[dict], train_config: dict) -> str:
    """Insert what was evaluated (model, epochs, training config) under the report's title."""
    title, body = report.split("\n", 1)
    config = json.dumps(train_config, indent=2, sort_keys=True)
    trained = f"trained for {len(history)} epochs" if history else "no training history found"
    section = f"\nModel `{name}`, {trained}. Training config:\n\n```json\n{config}\n```\n"
    return f"{title}\n{section}{body}"


def format_headline(result: dict, table: bool = True) -> str:
    """A short console summary: the headline table and the verdict against the baseline."""
    verdict = "beats" if result["beats_baseline"] else "does NOT beat"
    return (
        (metrics.comparison_table(result["rows"]) + "\n" if table else "")
        + f"{result['model']}: micro-F1 {result['micro_f1@calibrated']:.3f} at calibrated "
        f"thresholds ({result['micro_f1@0.5']:.3f} at 0.5) {verdict} "
        f"'{result['baseline']}' ({result['baseline_micro_f1']:.3f})"
    )


def compare_models(paths: list[Location]) -> str:
    """One Markdown table of evaluated models, each at its calibrated thresholds and at
    0.5, beside the trivial baselines: the seed report's model comparison.

    `paths` are model directories or whole runs (all their evaluated models). Models
    must have been scored on the same test posters, or the table would mislead.
    """
    evaluated = {
        model_dir: read_json(model_dir / "metrics.json", {}) for model_dir in model_dirs(paths)
    }
    splits = {model_dir: result.get("test_split") for model_dir, result in evaluated.items()}
    if len(set(splits.values())) > 1:
        listing = ", ".join(f"{path} ({split})" for path, split in splits.items())
        raise PosterRayError(f"these models were tested on different test splits: {listing}")
    labels = model_labels(list(evaluated))
    rows = {}
    for model_dir, result in evaluated.items():
        rows[f"{labels[model_dir]} @ calibrated"] = result["test@calibrated"]
        rows[f"{labels[model_dir]} @ 0.5"] = result["test@0.5"]
    rows.update(next(iter(evaluated.values()))["baselines"])
    return metrics.comparison_table(rows)


def model_dirs(paths: list[Location]) -> list[Location]:
    """The evaluated model directories that `paths` name, directly or as whole runs."""
    found = []
    for path in map(Location.of, paths):
        if (path / "metrics.json").is_file():
            found.append(path)
        elif RunDir(path).manifest.is_file():
            in_run = [
                model for model in (path / "models").iterdir() if (model / "metrics.json").is_file()
            ]
            if not in_run:
                raise PosterRayError(f"{path}: no evaluated model under {path / 'models'}")
            found.extend(in_run)
        else:
            raise PosterRayError(
                f"{path}: neither an evaluated model (no metrics.json: run `poster-ray "
                "evaluate`) nor a prepared run"
            )
    return list(dict.fromkeys(found))


def model_labels(model_dirs: list[Location]) -> dict[Location, str]:
    """Each model's directory name, or run/name where two runs share a model name."""
    names = [model_dir.name for model_dir in model_dirs]
    return {
        model_dir: model_dir.name
        if names.count(model_dir.name) == 1
        else f"{model_dir.parent.parent.name}/{model_dir.name}"
        for model_dir in model_dirs
    }


def read_json(location: Location, default: Any) -> Any:
    """A JSON file's value, or ``default`` when a model dir lacks that file."""
    return location.read_json() if location.is_file() else default
