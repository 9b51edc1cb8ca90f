"""Markdown for people: the headline table, the evaluation report, any table of rows.

Every table formats numbers alike (three decimals, tiny ones in scientific notation,
missing ones as n/a), so a model and its baselines read side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from poster_ray.verdict import format_interval

# Headline columns: (header, path into a metrics.classification_metrics dict).
HEADLINE_COLUMNS = (
    ("micro P", ("micro", "precision")),
    ("micro R", ("micro", "recall")),
    ("micro F1", ("micro", "f1")),
    ("macro F1", ("macro", "f1")),
    ("macro F1 (present)", ("macro_f1_present",)),
    ("samples F1", ("samples", "f1")),
    ("Hamming loss", ("hamming_loss",)),
    ("micro-AP", ("micro_ap",)),
    ("mAP", ("map",)),
    ("ROC-AUC", ("roc_auc",)),
)
PER_GENRE_COLUMNS = ("precision", "recall", "f1", "support", "ap", "roc_auc", "threshold")


def comparison_table(
    rows: dict[str, dict], differences: dict[str, dict] | None = None, baseline: str = ""
) -> str:
    """Markdown headline table, one row per named classification_metrics dict.

    With `differences` (row name -> poster_ray.verdict.micro_f1_difference), two more
    columns give each model row's micro-F1 minus `baseline`'s with its bootstrap
    interval, and the verdict that interval allows.
    """
    header = ["run"] + [title for title, _ in HEADLINE_COLUMNS]
    if differences is not None:
        header += [f"micro F1 - {baseline} [interval]", "verdict"]
    lines = [_markdown_row(header), _markdown_row(["---"] * len(header))]
    for name, metrics in rows.items():
        cells = [format_number(lookup(metrics, path)) for _, path in HEADLINE_COLUMNS]
        if differences is not None:
            cells += _difference_cells(differences.get(name))
        lines.append(_markdown_row([name] + cells))
    return "\n".join(lines) + "\n"


def _difference_cells(difference: dict | None) -> list[str]:
    """The difference, its interval and the verdict; blank for a row without one."""
    if difference is None:
        return ["", ""]
    return [format_interval(difference), difference["verdict"]]


def markdown_report(
    model_metrics: dict[str, dict],
    baselines: dict[str, dict],
    genres: list[str],
    curve_images: list[str],
    detail: str | None = None,
) -> str:
    """Markdown evaluation report: model rows next to baselines, per-genre table, curves.

    `model_metrics` maps a row name (e.g. "model @ 0.5", "model @ calibrated") to its
    metrics; the per-genre table shows `detail`, by default the last model entry.
    `curve_images` are paths relative to the report, embedded as images.
    """
    detail = detail if detail is not None else list(model_metrics)[-1]
    by_genre = {row["genre"]: row for row in model_metrics[detail]["per_genre"]}
    parts = [
        "# Evaluation report\n",
        f"{model_metrics[detail]['n_samples']} posters, {len(genres)} genres. "
        "Baselines are scored on the same split at threshold 0.5.\n",
        "## Headline\n",
        comparison_table({**model_metrics, **baselines}),
        f"## Per genre ({detail})\n",
        _markdown_row(["genre", *PER_GENRE_COLUMNS]),
        _markdown_row(["---"] * (len(PER_GENRE_COLUMNS) + 1)),
    ]
    for genre in genres:
        row = by_genre[genre]
        parts.append(
            _markdown_row([genre] + [format_number(row[column]) for column in PER_GENRE_COLUMNS])
        )
    if curve_images:
        parts.append("\n## Training curves\n")
        parts.extend(f"![{Path(image).stem}]({image})\n" for image in curve_images)
    return "\n".join(parts) + "\n"


def add_model_section(report: str, name: str, history: list[dict], train_config: dict) -> str:
    """Insert what was evaluated (model, epochs, training config) under the report's title."""
    title, body = report.split("\n", 1)
    config = json.dumps(train_config, indent=2, sort_keys=True)
    trained = f"trained for {len(history)} epochs" if history else "no training history found"
    section = f"\nModel `{name}`, {trained}. Training config:\n\n```json\n{config}\n```\n"
    return f"{title}\n{section}{body}"


def markdown_table(rows: list[dict]) -> str:
    """A Markdown table of dicts sharing their keys, numbers formatted as in reports."""
    header = list(rows[0]) if rows else []
    lines = [_markdown_row(header), _markdown_row(["---"] * len(header))]
    lines += [_markdown_row([format_number(row[key]) for key in header]) for row in rows]
    return "\n".join(lines) + "\n"


def lookup(metrics: dict, path: tuple[str, ...]) -> float | None:
    """Follow a key path such as ("micro", "f1") into a metrics dict."""
    value = metrics
    for key in path:
        value = value[key]
    return value


def format_number(value) -> str:
    """Scores to three decimals (small ones in scientific notation), integers and text
    as they are, missing values as n/a."""
    if value is None or isinstance(value, float) and np.isnan(value):
        return "n/a"
    if isinstance(value, float | np.floating):
        return f"{value:.3f}" if value == 0 or abs(value) >= 0.01 else f"{value:.2e}"
    return str(value)


def _markdown_row(cells: list[str]) -> str:
    """One Markdown table row; pipes inside cells are escaped."""
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"
