"""Predict stage: the likeliest genres of poster files, from a model bundle.

Each file is decoded with the bundle's own preprocessing spec, so the model sees exactly
the kind of input it was trained on. A file that cannot be read or decoded becomes an
error row; the other files are still predicted.

Every row has the same keys::

    {"path": str, "status": "ok" | "error", "error": str,
     "top3": [[genre, probability], ...],      # most probable first; [] on error
     "above_threshold": [genre, ...]}          # prob >= that genre's threshold, by prob
"""

from __future__ import annotations

import numpy as np

from poster_ray.bundle import Bundle
from poster_ray.images import read_and_decode

TOP_K = 3


def top_k(probabilities: np.ndarray, genres: list[str], k: int = TOP_K) -> list[tuple[str, float]]:
    """The k most probable genres, most probable first; ties keep genre order."""
    probabilities = np.asarray(probabilities)
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(genres[j], float(probabilities[j])) for j in order]


def above_threshold(
    probabilities: np.ndarray, genres: list[str], thresholds: np.ndarray
) -> list[str]:
    """The genres the bundle predicts (prob >= their own threshold), most probable first."""
    probabilities = np.asarray(probabilities)
    order = np.argsort(-probabilities, kind="stable")
    return [genres[j] for j in order if probabilities[j] >= thresholds[j]]


def predict_files(bundle: Bundle, paths: list[str], batch_size: int = 32) -> list[dict]:
    """One row per path, in input order; files are decoded and predicted a batch at a time."""
    rows = []
    for start in range(0, len(paths), batch_size):
        rows.extend(predict_batch(bundle, paths[start : start + batch_size]))
    return rows


def predict_batch(bundle: Bundle, paths: list[str]) -> list[dict]:
    """Decode a batch of files, then predict all that decoded in one model call."""
    decoded = [read_and_decode(str(path), bundle.spec) for path in paths]
    good = [pixels for pixels, _ in decoded if pixels is not None]
    predictions = iter(bundle.model.predict_on_batch(np.stack(good)) if good else [])
    rows = []
    for path, (pixels, error) in zip(paths, decoded, strict=True):
        row = {
            "path": str(path),
            "status": "error",
            "error": error,
            "top3": [],
            "above_threshold": [],
        }
        if pixels is not None:
            probabilities = next(predictions)
            row["status"] = "ok"
            row["top3"] = [list(pair) for pair in top_k(probabilities, bundle.genres)]
            row["above_threshold"] = above_threshold(
                probabilities, bundle.genres, bundle.thresholds
            )
        rows.append(row)
    return rows


def format_predictions(rows: list[dict]) -> str:
    """One line per file: ``path: Action 0.62, ... | above threshold: Action``."""
    return "\n".join(format_row(row) for row in rows)


def format_row(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['path']}: error: {row['error']}"
    top = ", ".join(f"{genre} {probability:.2f}" for genre, probability in row["top3"])
    return f"{row['path']}: {top} | above threshold: {', '.join(row['above_threshold']) or 'none'}"
