"""A finished experiment's results: the trials table, the best trial exported as a model
(as `train` exports a run), its plot and the tuning summary."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict

import pandas as pd
from ray.tune import Result, ResultGrid

from poster_ray import export, plots, reports
from poster_ray.config import MONITORS, TrainConfig, TuneSettings, pick_best
from poster_ray.errors import PosterRayError
from poster_ray.layout import ModelDir, RunDir
from poster_ray.storage import Location
from poster_ray.tune.space import decode_point, point_config


def trial_rows(grid: ResultGrid, space: dict, settings: TuneSettings) -> list[dict]:
    """One row per trial, numbered in the order the trials started (`started_at`): the
    searcher's order, as Tune starts trials first in, first out. Each row has the trial's
    status, its best epoch's objective, and its hyperparameters as the model saw them."""
    objective = settings.objective
    rows = []
    for number, result in enumerate(sorted(grid, key=started_at), start=1):
        epochs = epochs_of(result)
        scored = [epoch for epoch in epochs if pd.notna(epoch.get(objective))]
        best = pick_best(objective)(scored, key=lambda epoch: epoch[objective]) if scored else None
        last_epoch = int(scored[-1]["epoch"]) if scored else 0
        rows.append(
            {
                "trial": number,
                "trial_id": result.metrics["trial_id"],
                "status": trial_status(result, last_epoch, settings.max_epochs),
                "epochs": last_epoch,
                "best": float(best[objective]) if best else None,
                "best_epoch": int(best["epoch"]) if best else None,
                "images_per_epoch": scored[-1].get("train_images") if scored else None,
                **decode_point(space, result.config, settings.searcher),
                "checkpoint": best["checkpoint_path"] if best else None,
                "last_checkpoint": scored[-1]["checkpoint_path"] if scored else None,
            }
        )
    return rows


def epochs_of(result: Result) -> list[dict]:
    """What a trial reported, one dict per epoch."""
    frame = result.metrics_dataframe
    return [] if frame is None else frame.to_dict("records")


def started_at(result: Result) -> float:
    """When the trial started (Tune's result fields: the time of its first report minus
    its time so far); a trial that never reported sorts last. Tune's `Result`s come in
    no fixed order once an experiment is resumed."""
    epochs = epochs_of(result)
    if not epochs:
        return math.inf
    return epochs[0]["timestamp"] - epochs[0]["time_total_s"]


def trial_status(result: Result, epochs: int, max_epochs: int) -> str:
    if result.error is not None:
        return "error"
    return "completed" if epochs >= max_epochs else "stopped early"


def export_best(
    run: RunDir,
    name: str,
    base: TrainConfig,
    settings: TuneSettings,
    space: dict,
    rows: list[dict],
) -> Location:
    """Export the best epoch of the best trial as model `name` (as `train` exports a run),
    with the trials table (CSV, Markdown), the objective plot and a summary beside it."""
    from ray.train import Checkpoint

    scored = [row for row in rows if row["best"] is not None]
    if not scored:
        raise PosterRayError(
            f"no trial of {name!r} reported a result; see {run.ray_storage / name}"
        )
    best = pick_best(settings.objective)(scored, key=lambda row: row["best"])
    config = point_config(base, {key: best[key] for key in space})
    out = export.export_model(
        run,
        name,
        config,
        Checkpoint(best["checkpoint"], filesystem=run.root.fs),
        Checkpoint(best["last_checkpoint"], filesystem=run.root.fs),
    )
    model_dir = ModelDir(out)
    table = [{key: value for key, value in row.items() if "checkpoint" not in key} for row in rows]
    model_dir.trials_csv.write_text(pd.DataFrame(table).to_csv(index=False))
    model_dir.trials_table.write_text(reports.markdown_table(table))
    plots.plot_trials(
        table, settings.objective, MONITORS[settings.objective] == "max", model_dir.trials_plot
    )
    # Written last: a model directory with its tuning summary holds a finished export.
    model_dir.tuning.write_json(tuning_summary(best, rows, settings))
    return out


def tuning_summary(best: dict, rows: list[dict], settings: TuneSettings) -> dict:
    """What tuning.json holds: the best trial beside the first, and how the others ended."""
    return {
        "objective": settings.objective,
        "best_trial": best["trial"],
        "best_value": best["best"],
        "best_epoch": best["best_epoch"],
        "first_trial_value": rows[0]["best"],  # the untuned default, unless told otherwise
        "trials": len(rows),
        "stopped_early": sum(row["status"] == "stopped early" for row in rows),
        "errors": sum(row["status"] == "error" for row in rows),
        "settings": asdict(settings),
    }


def is_tuned(model_dir: ModelDir, settings: TuneSettings) -> bool:
    """Whether `model_dir` holds the export of a finished experiment with `settings` (the
    experiment's own settings were checked against the ones it started with)."""
    if not model_dir.tuning.is_file():
        return False
    return model_dir.tuning.read_json().get("settings") == json.loads(json.dumps(asdict(settings)))


def format_tuning_summary(model_dir: str | os.PathLike | Location) -> str:
    """The tuning verdict in a few lines: best trial against the first (default) one."""
    model_dir = ModelDir(model_dir)
    summary = model_dir.tuning.read_json()
    return (
        f"{summary['trials']} of {summary['settings']['trials']} trials "
        f"({summary['stopped_early']} stopped early by ASHA or "
        f"the time budget, {summary['errors']} failed); best: trial {summary['best_trial']}, "
        f"{summary['objective']} {summary['best_value']:.4f} at epoch {summary['best_epoch']}; "
        f"trial 1 (untuned default): {summary['first_trial_value']:.4f}\n"
        f"trials table: {model_dir.trials_table}; plot: {model_dir.trials_plot}"
    )
