"""Threshold policies side by side on trained models: what `auto` sees on validation
(cross-validated micro-F1) against what each policy scores on the test split.

For each model, its bundle's model scores the validation and test posters once; every
policy (poster_ray.thresholds) is fitted on all validation posters and applied to the
test split, and its test micro-F1 is compared with the per-genre policy's by the same
paired bootstrap as the verdicts (poster_ray.verdict).

    python bench/threshold_policies.py RUN_DIR MODEL [MODEL ...] \
        [--out bench/results/threshold_policies]
"""

from __future__ import annotations

import argparse

from poster_ray import metrics
from poster_ray.bundle import load_bundle
from poster_ray.evaluate import predict_split
from poster_ray.layout import RunDir
from poster_ray.storage import Location
from poster_ray.thresholds import POLICIES, choose_thresholds, fit_thresholds
from poster_ray.verdict import format_interval, micro_f1_difference

COLUMNS = ("model", "policy", "val CV micro-F1", "test micro-F1", "test macro-F1",
           "test Hamming", "vs per_genre [95%]", "auto's choice")  # fmt: skip


def policy_rows(run: RunDir, name: str) -> list[dict]:
    """One row per policy for model `name` of `run`."""
    bundle = load_bundle(run.model(name).bundle)
    _, val_labels, val_prob = predict_split(bundle.model, run, "val")
    _, test_labels, test_prob = predict_split(bundle.model, run, "test")
    _, auto = choose_thresholds("auto", val_labels, val_prob)
    predictions = {
        policy: test_prob >= fit_thresholds(policy, val_labels, val_prob) for policy in POLICIES
    }
    rows = []
    for policy, predicted in predictions.items():
        scored = metrics.classification_metrics(
            test_labels, predicted.astype(float), 0.5, bundle.genres
        )
        versus = micro_f1_difference(test_labels, predicted, predictions["per_genre"])
        rows.append(
            {
                "model": name,
                "policy": policy,
                "val CV micro-F1": auto["cross_validated_micro_f1"][policy],
                "test micro-F1": scored["micro"]["f1"],
                "test macro-F1": scored["macro_f1_present"],
                "test Hamming": scored["hamming_loss"],
                "vs per_genre": versus,
                "auto's choice": policy == auto["policy"],
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for row in rows:
        cells = [
            row["model"],
            row["policy"],
            *(f"{row[key]:.3f}" for key in COLUMNS[2:6]),
            f"{format_interval(row['vs per_genre'])} {row['vs per_genre']['verdict']}",
            "yes" if row["auto's choice"] else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a run directory with trained, exported models")
    parser.add_argument("models", nargs="+", help="model names under RUN/models")
    parser.add_argument("--out", default="bench/results/threshold_policies")
    args = parser.parse_args()
    run = RunDir(args.run)
    rows = [row for name in args.models for row in policy_rows(run, name)]
    Location.of(args.out + ".json").write_json(rows)
    table = markdown(rows)
    Location.of(args.out + ".md").write_text(table)
    print(table, end="")


if __name__ == "__main__":
    main()
