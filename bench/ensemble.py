"""An ensemble of trained models, measured before it is built: the mean of their
probabilities, scored beside each model alone by the same evaluation.

Each model's bundle scores the validation and test posters once; the ensemble averages
the probabilities. Every row's thresholds are fitted on validation by the policy `auto`
(poster_ray.thresholds), as an exported bundle's are, and scored on the test split; the
ensemble's micro-F1 is compared with the first model's by the paired bootstrap of the
verdicts (poster_ray.verdict). Not a product feature: a bundle holds one model.

    python bench/ensemble.py RUN_DIR MODEL MODEL [MODEL ...] [--out bench/results/ensemble]
"""

from __future__ import annotations

import argparse

import numpy as np

from poster_ray import metrics
from poster_ray.bundle import load_bundle
from poster_ray.errors import PosterRayError
from poster_ray.evaluate import predict_split
from poster_ray.layout import RunDir
from poster_ray.reports import markdown_table
from poster_ray.storage import Location
from poster_ray.thresholds import choose_thresholds
from poster_ray.verdict import format_interval, micro_f1_difference

SPLITS = ("val", "test")


def split_predictions(run: RunDir, model) -> dict[str, tuple[np.ndarray, ...]]:
    """A model's (ids, labels, probabilities) of the validation and test posters."""
    return {split: predict_split(model, run, split) for split in SPLITS}


def scored_row(name: str, genres: list[str], labels: dict, probabilities: dict) -> dict:
    """Thresholds by `auto` on validation; the test split's metrics at them and at 0.5."""
    thresholds, chosen = choose_thresholds("auto", labels["val"], probabilities["val"])
    test_labels, test_prob = labels["test"], probabilities["test"]
    calibrated = metrics.classification_metrics(test_labels, test_prob, thresholds, genres)
    at_half = metrics.classification_metrics(test_labels, test_prob, 0.5, genres)
    on_val = metrics.classification_metrics(labels["val"], probabilities["val"], thresholds, genres)
    return {
        "model": name,
        "policy": chosen["policy"],
        "micro-F1": calibrated["micro"]["f1"],
        "macro-F1": calibrated["macro_f1_present"],
        "mAP": calibrated["map"],
        "ROC-AUC": calibrated["roc_auc"],
        "Hamming @0.5": at_half["hamming_loss"],
        "val micro-F1": on_val["micro"]["f1"],
        "predicted": test_prob >= thresholds,
    }


def table_row(row: dict) -> dict:
    """A row as the Markdown table shows it: the comparison as its interval and verdict."""
    versus = row.get("vs first")
    shown = {key: value for key, value in row.items() if key not in ("predicted", "vs first")}
    shown["vs first [95%]"] = f"{format_interval(versus)} {versus['verdict']}" if versus else ""
    return shown


def ensemble_rows(run: RunDir, names: list[str]) -> list[dict]:
    """A row per model, then one for the mean of their probabilities; each after the
    first compared with the first."""
    # Every bundle loaded (and checked) before any poster is predicted.
    bundles = {name: load_bundle(run.model(name).bundle) for name in names}
    predictions = {name: split_predictions(run, bundle.model) for name, bundle in bundles.items()}
    ids = {split: predictions[names[0]][split][0] for split in SPLITS}
    for name, splits in predictions.items():
        for split in SPLITS:
            if not np.array_equal(splits[split][0], ids[split]):
                raise PosterRayError(f"{name}: its {split} posters differ from {names[0]}'s")
    labels = {split: predictions[names[0]][split][1] for split in SPLITS}
    probabilities = {
        name: {split: splits[split][2] for split in SPLITS} for name, splits in predictions.items()
    }
    probabilities["mean of " + ", ".join(names)] = {
        split: np.mean([each[split] for each in probabilities.values()], axis=0) for split in SPLITS
    }
    genres = run.load_genres()
    rows = [scored_row(name, genres, labels, probs) for name, probs in probabilities.items()]
    for row in rows[1:]:
        row["vs first"] = micro_f1_difference(
            labels["test"], row["predicted"], rows[0]["predicted"]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a run directory with trained, exported models")
    parser.add_argument("models", nargs="+", help="model names under RUN/models (two or more)")
    parser.add_argument("--out", default="bench/results/ensemble")
    args = parser.parse_args()
    if len(args.models) < 2:
        parser.error("an ensemble needs two models or more")
    try:
        rows = ensemble_rows(RunDir(args.run), args.models)
    except PosterRayError as error:
        raise SystemExit(f"bench/ensemble.py: {error}") from None
    table = markdown_table([table_row(row) for row in rows])
    Location.of(args.out + ".json").write_json(
        [{key: value for key, value in row.items() if key != "predicted"} for row in rows]
    )
    Location.of(args.out + ".md").write_text(table)
    print(table, end="")


if __name__ == "__main__":
    main()
