"""The test posters a model gets most wrong and most right, by their own loss.

A poster's loss is the mean binary cross-entropy of its probabilities against its true
genres: high when the model is confident and wrong, on any genre, low when it is
confident and right on all of them. Its predicted genres are those at or above the
model's calibrated thresholds, as inference reports them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Probabilities are clipped before the logarithm: a 0 or 1 must not make the loss infinite.
EPSILON = 1e-6


def poster_losses(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Mean binary cross-entropy per poster (row)."""
    p = np.clip(probabilities.astype(np.float64), EPSILON, 1 - EPSILON)
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean(axis=1)


def ranked_posters(
    predictions: pd.DataFrame,
    manifest: pd.DataFrame,
    genres: list[str],
    thresholds: np.ndarray,
    count: int,
) -> dict[str, list[dict]]:
    """{"most wrong": [...], "most right": [...]}, `count` posters each: id, path, loss,
    true genres and predicted (genre, probability) pairs, most probable first.

    `predictions` has id and probabilities (ModelDir.test_predictions); `manifest` id,
    path and labels.
    """
    joined = predictions.merge(manifest[["id", "path", "labels"]], on="id", how="inner")
    if joined.empty:
        return {"most wrong": [], "most right": []}
    probabilities = np.stack(joined["probabilities"].to_numpy()).astype(np.float32)
    labels = np.stack(joined["labels"].to_numpy()).astype(np.float32)
    losses = poster_losses(labels, probabilities)
    # Ties keep manifest order, so the same run always shows the same posters.
    order = np.argsort(losses, kind="stable")

    def describe(row: int) -> dict:
        ranked = np.argsort(-probabilities[row], kind="stable")
        predicted = [i for i in ranked if probabilities[row, i] >= thresholds[i]]
        return {
            "id": joined["id"].iloc[row],
            "path": joined["path"].iloc[row],
            "loss": float(losses[row]),
            "true": [genres[i] for i in np.flatnonzero(labels[row])],
            "predicted": [(genres[i], float(probabilities[row, i])) for i in predicted],
        }

    return {
        "most wrong": [describe(row) for row in order[::-1][:count]],
        "most right": [describe(row) for row in order[:count]],
    }
