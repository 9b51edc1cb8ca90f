"""RUN/report/index.html: everything a finished run says, on one page.

The model comparison beside the baselines, then per model: its verdict, its training
curves, its per-genre scores with support, its tuning trials when it was tuned, and the
test posters it gets most wrong and most right. Images are embedded, so the page opens
from a file, copied anywhere, with no server and no network. It reads only what the
stages wrote (no model is loaded), so it takes seconds.
"""

from __future__ import annotations

import datetime
import io
from html import escape

import numpy as np
import pandas as pd

from poster_ray.data.tables import read_table
from poster_ray.layout import ModelDir, RunDir
from poster_ray.report.html import image, page, table
from poster_ray.report.posters import ranked_posters
from poster_ray.report.thumbnails import poster_thumbnail
from poster_ray.reports import HEADLINE_COLUMNS, PER_GENRE_COLUMNS, lookup
from poster_ray.storage import Location

POSTERS_SHOWN = 8  # of the most wrong, and of the most right, per model
PER_GENRE_SCORES = "test@calibrated"  # the thresholds the bundle predicts with


def write_run_report(run: RunDir) -> Location:
    """Write the run's report page; returns its location."""
    evaluated = [model for model in run.model_dirs() if model.metrics.is_file()]
    results = {model.name: model.metrics.read_json() for model in evaluated}
    manifest = read_table(run.manifest, columns=["id", "path", "split", "labels"])
    parts = [f"<h1>poster-ray run <code>{escape(run.root.uri)}</code></h1>", run_summary(run)]
    if evaluated:
        parts.append(comparison_section(results))
        parts.extend(model_section(model, results[model.name], manifest) for model in evaluated)
    else:
        parts.append("<p>No evaluated model yet: train one (<code>poster-ray train</code>).</p>")
    run.report.write_text(page(f"poster-ray: {run.root.name}", "\n".join(parts)))
    return run.report


def run_summary(run: RunDir) -> str:
    """What the run was made from, when, and its split sizes."""
    summary = run.summary.read_json() if run.summary.is_file() else {}
    splits = summary.get("splits", {})
    sizes = ", ".join(f"{name} {info['posters']}" for name, info in splits.items())
    made = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"<p>{summary.get('kept', '?')} posters from <code>{escape(str(summary.get('data_dir')))}"
        f"</code>, {len(run.load_genres())} genres{'; ' + escape(sizes) if sizes else ''}. "
        f"Report written {made}.</p>"
    )


def comparison_section(results: dict[str, dict]) -> str:
    """Every model at its calibrated thresholds and at 0.5, beside the trivial baselines
    (scored on the same test posters)."""
    rows, classes = [], []
    for name, result in results.items():
        for key, label in (("test@calibrated", "calibrated"), ("test@0.5", "0.5")):
            rows.append([f"{name} @ {label}", *headline_values(result[key])])
            classes.append("")
    baselines = next(iter(results.values()))["baselines"]
    for name, scores in baselines.items():
        rows.append([f"baseline: {name}", *headline_values(scores)])
        classes.append("baseline")
    header = ["model", *(title for title, _ in HEADLINE_COLUMNS)]
    return "<h2>Model comparison (test split)</h2>" + table(header, rows, classes)


def headline_values(scores: dict) -> list:
    return [lookup(scores, path) for _, path in HEADLINE_COLUMNS]


def model_section(model: ModelDir, result: dict, manifest: pd.DataFrame) -> str:
    """One model: verdict, curves, per-genre scores, trials, hardest and easiest posters."""
    headline = result["headline"]
    good = headline["beats_baseline"]
    verdict = (
        f"<p class='verdict {'good' if good else 'bad'}'>micro-F1 "
        f"{headline['micro_f1@calibrated']:.3f} at calibrated thresholds "
        f"{'beats' if good else 'does NOT beat'} '{escape(headline['baseline'])}' "
        f"({headline['baseline_micro_f1']:.3f}); validation micro-F1 "
        f"{headline['val_micro_f1']:.3f}</p>"
    )
    parts = [f"<h2 id='{escape(model.name)}'>{escape(model.name)}</h2>", verdict]
    curves = model.curves()
    if curves:
        images = "".join(image(curve.read_bytes(), "image/png", curve.name) for curve in curves)
        parts.append(f"<h3>Training curves</h3><div class='curves'>{images}</div>")
    parts.append(per_genre_section(result))
    if model.trials_csv.is_file():
        parts.append(trials_section(model))
    parts.append(posters_section(model, result, manifest))
    return "\n".join(parts)


def per_genre_section(result: dict) -> str:
    rows = [
        [row["genre"], *(row[c] for c in PER_GENRE_COLUMNS)]
        for row in result[PER_GENRE_SCORES]["per_genre"]
    ]
    return "<h3>Per genre (test split, calibrated thresholds)</h3>" + table(
        ["genre", *PER_GENRE_COLUMNS], rows
    )


def trials_section(model: ModelDir) -> str:
    trials = pd.read_csv(io.StringIO(model.trials_csv.read_text()))
    parts = ["<h3>Tuning trials</h3>", table(list(trials.columns), trials.itertuples(index=False))]
    if model.trials_plot.is_file():
        parts.append(image(model.trials_plot.read_bytes(), "image/png", "trials"))
    return "\n".join(parts)


def posters_section(model: ModelDir, result: dict, manifest: pd.DataFrame) -> str:
    """Thumbnails of the test posters with the highest and the lowest loss."""
    if not model.test_predictions.is_file():
        return (
            "<p class='muted'>No per-poster test predictions (evaluated before they were "
            f"kept): run <code>poster-ray evaluate {escape(model.root.uri)}</code>.</p>"
        )
    ranked = ranked_posters(
        read_table(model.test_predictions),
        manifest[manifest["split"] == "test"],
        result["genres"],
        np.asarray(result["thresholds"], dtype=np.float32),
        POSTERS_SHOWN,
    )
    parts = []
    for title, posters in ranked.items():
        cards = "".join(poster_card(poster) for poster in posters)
        parts.append(f"<h3>Test posters it gets {title}</h3><div class='posters'>{cards}</div>")
    return "\n".join(parts)


def poster_card(poster: dict) -> str:
    """A thumbnail with its true genres and its predictions (hits green, misses red)."""
    thumb = poster_thumbnail(poster["path"])
    picture = (
        image(thumb, "image/jpeg", poster["id"]) if thumb else "<div class='muted'>no image</div>"
    )
    true = set(poster["true"])
    predicted = (
        ", ".join(
            f"<span class='{'hit' if genre in true else 'miss'}'>{escape(genre)} {prob:.2f}</span>"
            for genre, prob in poster["predicted"]
        )
        or "<span class='muted'>nothing</span>"
    )
    return (
        f"<div class='poster'>{picture}<b>{escape(poster['id'])}</b> "
        f"<span class='muted'>loss {poster['loss']:.2f}</span><br>"
        f"true: {escape(', '.join(poster['true']))}<br>predicted: {predicted}</div>"
    )
