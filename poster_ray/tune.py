"""Tuning stage: Ray Tune searches a model's hyperparameters with a Bayesian searcher.

Every trial is a Ray Train run made by `train.make_trainer`, the code `poster-ray train`
runs, inside a Tune function trainable (the pattern Train V2 documents); it reports every
epoch, so ASHA can stop weak trials early. The first trial is the model's untuned
default, so the trials table shows what tuning bought. Rerunning the same command
resumes an interrupted experiment, and an unfinished trial resumes its Train run from
its last epoch checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import ClassVar

import pandas as pd
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter

from poster_ray import export, models, plots, reports, train
from poster_ray.config import (
    MONITORS,
    SEARCHERS,
    TrainConfig,
    TuneSettings,
    pick_best,
)
from poster_ray.errors import PosterRayError
from poster_ray.layout import ModelDir, RunDir
from poster_ray.models import Choice, Range
from poster_ray.storage import Location

SETTINGS_FILE = "poster_ray_tune.json"
TRIAL_TRAIN_RUNS = "train_runs"  # each trial's Ray Train run, under the experiment
TRIAL_DIR = re.compile(r"run_trial_(?P<id>[0-9a-f]+)_(?P<number>\d+)_")  # Tune's naming


def tune_model(
    run: RunDir,
    name: str,
    base: TrainConfig,
    settings: TuneSettings,
    callbacks: Sequence[tune.Callback] = (),
) -> Location:
    """Search `base.model`'s space on `run` (or resume experiment `name`), then export
    the best epoch of the best trial as model `name`; returns its model directory.

    `base` holds what is not searched (workers, device, precision, weights).
    """
    base = trial_base(base, settings)
    check_tune_settings(base, settings)
    start_points = settings.start_points or [models.DEFAULT_POINTS[base.model]]
    check_start_points(run, base, models.SEARCH_SPACES[base.model], start_points)
    experiment = run.ray_storage / name
    check_same_experiment(experiment, base, settings)
    if is_tuned(run.model(name), settings):
        print(f"reusing model {name!r}: tuned before with these settings", flush=True)
        return run.model(name).root
    # Trials at once share the nodes, or they would queue.
    base = train.place_workers(base, groups=settings.concurrency)
    data = train.load_training_data(run, base)
    space = space_for_data(base.model, data.train_rows * base.workers)
    for point in start_points:
        check_in_space(space, point)

    trainable = make_trainable(data, space, base, settings, experiment)
    if tune.Tuner.can_restore(experiment.uri):
        print(f"resuming tuning experiment {experiment}")
        tuner = tune.Tuner.restore(
            experiment.uri, trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        tuner = new_tuner(trainable, space, experiment, settings, start_points, callbacks)
    try:
        grid = tuner.fit()
    finally:
        ReleaseTrainWorkers.release_all()
    # Ctrl-C leaves trials unfinished, or not yet created; so does the time budget, but
    # it has had its say: the best trial so far wins.
    finished = grid.num_terminated + grid.num_errors
    if finished < len(grid) or finished < settings.trials and not settings.time_budget_s:
        raise PosterRayError(
            f"tuning {name!r} stopped with {finished} of {settings.trials} trials done; "
            f"rerun the same command to continue"
        )
    return export_best(run, name, base, settings, trial_rows(grid, space, settings))


def trial_base(base: TrainConfig, settings: TuneSettings) -> TrainConfig:
    """The fixed part of every trial's TrainConfig.

    ASHA is the early stopping; Tune, not Train, retries a failed trial, because a Train
    controller that restarts its workers after Tune stopped the trial would reserve a
    new placement group that nobody frees.
    """
    return replace(
        base,
        epochs=settings.max_epochs,
        early_stopping=0,
        monitor=settings.objective,
        max_failures=0,
    )


def check_tune_settings(base: TrainConfig, settings: TuneSettings) -> None:
    """Settings errors in one line, before Ray starts anything."""
    if settings.searcher not in SEARCHERS:
        raise PosterRayError(f"unknown searcher {settings.searcher!r}; choose one of {SEARCHERS}")
    if settings.objective not in MONITORS:
        raise PosterRayError(
            f"unknown objective {settings.objective!r}; choose one of {list(MONITORS)}"
        )
    for setting in ("trials", "max_epochs", "concurrency", "grace_period"):
        if getattr(settings, setting) < 1:
            raise PosterRayError(f"--{setting.replace('_', '-')} must be at least 1")
    if settings.grace_period > settings.max_epochs:
        raise PosterRayError("--grace-period cannot be longer than --max-epochs")
    if settings.searcher == "gp":
        try:
            import bayes_opt  # noqa: F401
        except ImportError:
            raise PosterRayError(
                "--searcher gp needs bayesian-optimization<2: pip install 'poster-ray[bayesopt]'"
            ) from None
    train.check_settings(base)


def check_start_points(
    run: RunDir, base: TrainConfig, space: dict, start_points: list[dict]
) -> None:
    """Each point tried first must lie in the space and build for this run's image size."""
    for point in start_points:
        check_in_space(space, point)
        train.check_model_builds(run, point_config(base, point))


def space_for_data(model: str, max_batch: int) -> dict:
    """`model`'s search space without batch sizes larger than the training split allows
    (a trial proposing one could only fail)."""
    space = dict(models.SEARCH_SPACES[model])
    batches = tuple(size for size in space["batch_size"].values if size <= max_batch)
    if not batches:
        raise PosterRayError(
            f"the training split is too small for any batch size tuning tries "
            f"({space['batch_size'].values}): at most {max_batch} posters per step"
        )
    space["batch_size"] = Choice(batches)
    return space


def check_same_experiment(experiment: Location, base: TrainConfig, settings: TuneSettings) -> None:
    """Refuse to resume experiment `name` with other settings: Tune would silently keep
    the old ones."""
    wanted = {"train": asdict(base), "tune": asdict(settings)}
    wanted = json.loads(json.dumps(wanted))  # as it reads back from the file
    saved_file = experiment / SETTINGS_FILE
    if saved_file.is_file():
        saved = saved_file.read_json()
        changed = sorted(
            f"{part}.{key}"
            for part in wanted
            for key in wanted[part]
            if saved[part].get(key) != wanted[part][key]
        )
        if changed:
            raise PosterRayError(
                f"tuning experiment {experiment.name!r} was started with other settings "
                f"({', '.join(changed)}); rerun it unchanged to resume, or pick another --name"
            )
        return
    saved_file.write_json(wanted)


def is_tuned(model_dir: ModelDir, settings: TuneSettings) -> bool:
    """Whether `model_dir` holds the export of a finished experiment with `settings` (the
    experiment's own settings were checked against the ones it started with)."""
    if not model_dir.tuning.is_file():
        return False
    return model_dir.tuning.read_json().get("settings") == json.loads(json.dumps(asdict(settings)))


def make_trainable(
    data: train.TrainingData,
    space: dict,
    base: TrainConfig,
    settings: TuneSettings,
    experiment: Location,
):
    """`run_trial` with what every trial shares; the trial function itself only waits on
    its Train run, whose workers hold the CPUs (Tune refuses 0)."""
    return tune.with_resources(
        tune.with_parameters(
            run_trial,
            data=data,
            space=space,
            base=asdict(base),
            searcher=settings.searcher,
            storage=(experiment / TRIAL_TRAIN_RUNS).uri,
        ),
        {"cpu": 0.01},
    )


def new_tuner(
    trainable,
    space: dict,
    experiment: Location,
    settings: TuneSettings,
    start_points: list[dict],
    callbacks: Sequence[tune.Callback],
) -> tune.Tuner:
    return tune.Tuner(
        trainable,
        param_space={key: search_domain(param, settings.searcher) for key, param in space.items()},
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(settings, space, start_points),
            scheduler=ASHAScheduler(
                time_attr="epoch",  # not training_iteration: a resumed trial starts mid-way
                max_t=settings.max_epochs,
                grace_period=settings.grace_period,
                reduction_factor=settings.reduction_factor,
            ),
            metric=settings.objective,
            mode=MONITORS[settings.objective],
            num_samples=settings.trials,
            time_budget_s=settings.time_budget_s,
        ),
        run_config=tune.RunConfig(
            name=experiment.name,
            storage_path=experiment.parent.uri,
            callbacks=[ReleaseTrainWorkers(), TrialLines(settings), *callbacks],
            failure_config=tune.FailureConfig(max_failures=TrainConfig.max_failures),
            checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
            verbose=0,  # TrialLines prints one line per trial instead of Tune's tables
        ),
    )


# ------------------------------------------------------------------ search space


def make_searcher(
    settings: TuneSettings, space: dict, start_points: list[dict]
) -> ConcurrencyLimiter:
    """TPE or a Gaussian process, limited to `concurrency` trials at once so that each
    new proposal learns from the results before it."""
    metric, mode = settings.objective, MONITORS[settings.objective]
    points = [encode_point(space, point, settings.searcher) for point in start_points]
    # Both start with random trials; their usual 10 would leave a 10-trial search random.
    random_first = min(10, max(2, settings.trials // 3))
    if settings.searcher == "tpe":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)

        sampler = optuna.samplers.TPESampler(
            n_startup_trials=random_first,
            multivariate=True,
            seed=settings.seed,
        )
        searcher = OptunaSearch(
            metric=metric, mode=mode, points_to_evaluate=points, sampler=sampler
        )
    else:
        from ray.tune.search.bayesopt import BayesOptSearch

        searcher = BayesOptSearch(
            metric=metric,
            mode=mode,
            points_to_evaluate=points,
            random_search_steps=random_first,
            random_state=settings.seed,
        )
    return ConcurrencyLimiter(searcher, max_concurrent=settings.concurrency)


def search_domain(param: Range | Choice, searcher: str):
    """The Tune domain of one hyperparameter.

    TPE takes log scales, integers and choices natively. BayesOptSearch takes continuous
    ranges only, so for it a log range is searched as its logarithm, and a choice as an
    index in [0, n); `decode_value` maps them back.
    """
    if searcher == "gp":
        if isinstance(param, Choice):
            return tune.uniform(0, len(param.values))
        if param.log:
            return tune.uniform(math.log(param.low), math.log(param.high))
        return tune.uniform(param.low, param.high)
    if isinstance(param, Choice):
        return tune.choice(list(param.values))
    if param.integer:
        return (tune.lograndint if param.log else tune.randint)(param.low, param.high + 1)
    return (tune.loguniform if param.log else tune.uniform)(param.low, param.high)


def decode_value(param: Range | Choice, value, searcher: str):
    """A searcher's value as the hyperparameter's own (see `search_domain`)."""
    if isinstance(param, Choice):
        if searcher == "gp":
            return param.values[min(int(value), len(param.values) - 1)]
        return value
    if searcher == "gp" and param.log:
        value = math.exp(value)
    value = min(max(value, param.low), param.high)
    return int(round(value)) if param.integer else float(value)


def encode_value(param: Range | Choice, value, searcher: str):
    """The inverse of `decode_value`, for the points tried first."""
    if searcher != "gp":
        return value
    if isinstance(param, Choice):
        return param.values.index(value) + 0.5
    return math.log(value) if param.log else float(value)


def check_in_space(space: dict, point: dict) -> None:
    """A start point must be one the searcher could propose, or its result misleads it."""
    if point.keys() != space.keys():
        raise PosterRayError(f"start point {point} must set exactly: {', '.join(space)}")
    for key, param in space.items():
        inside = (
            point[key] in param.values
            if isinstance(param, Choice)
            else param.low <= point[key] <= param.high
        )
        if not inside:
            raise PosterRayError(f"start point {key}={point[key]} is outside the space: {param}")


def decode_point(space: dict, point: dict, searcher: str) -> dict:
    return {key: decode_value(space[key], point[key], searcher) for key in space}


def encode_point(space: dict, point: dict, searcher: str) -> dict:
    return {key: encode_value(space[key], point[key], searcher) for key in space}


def point_config(base: TrainConfig, point: dict) -> TrainConfig:
    """The TrainConfig of one point of the model's search space."""
    return replace(base, **models.point_settings(base.model, point))


# ------------------------------------------------------------------- the trials


def run_trial(
    point: dict,
    *,
    data: train.TrainingData,
    space: dict,
    base: dict,
    searcher: str,
    storage: str,
):
    """One trial: a Ray Train run of the decoded point, reporting each epoch to Tune.

    Named after the trial, so a resumed experiment resumes the run from its checkpoint.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    config = point_config(TrainConfig(**base), decode_point(space, point, searcher))
    trial_id = tune.get_context().get_trial_id()
    train.make_trainer(data, config, trial_id, Location(storage), [TuneReportCallback()]).fit()


class ReleaseTrainWorkers(tune.Callback):
    """Free the CPUs of a trial's Train workers when the trial ends.

    Tune kills a trial that ASHA stops; its Train controller dies with it, but the
    workers' placement group lives as long as the Ray job (ray#54305; Ray's own cleaner
    needs the dashboard's state API), and on 2 CPUs the next trial then waits forever.
    The workers report their group's id, and this removes it.
    """

    # Class-wide, not per instance: Tuner.restore runs a pickled copy of this callback,
    # and the driver must still free what that copy saw when the experiment stops.
    seen: ClassVar[set[str]] = set()

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        if train.PLACEMENT_GROUP_KEY in result:
            self.seen.add(result[train.PLACEMENT_GROUP_KEY])

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        release_placement_group((trial.last_result or {}).get(train.PLACEMENT_GROUP_KEY))

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        release_placement_group((trial.last_result or {}).get(train.PLACEMENT_GROUP_KEY))

    @classmethod
    def release_all(cls) -> None:
        """After the experiment, interrupted or not: trials cut off mid-run never complete."""
        for group_id in cls.seen:
            release_placement_group(group_id)
        cls.seen.clear()


class TrialLines(tune.Callback):
    """One line per finished trial: its objective and how far it got."""

    def __init__(self, settings: TuneSettings) -> None:
        self.objective, self.trials, self.done = settings.objective, settings.trials, 0

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.done += 1
        result = trial.last_result or {}
        print(
            f"trial {self.done}/{self.trials} ({trial.trial_id}): {self.objective} "
            f"{result.get(self.objective, float('nan')):.4f} after {result.get('epoch', 0)} "
            "epoch(s)",
            flush=True,
        )

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.done += 1
        print(f"trial {self.done}/{self.trials} ({trial.trial_id}) failed", flush=True)


def release_placement_group(group_id: str | None) -> None:
    if not group_id:
        return
    from ray.util.placement_group import PlacementGroup, placement_group_table

    group = PlacementGroup(ray.PlacementGroupID.from_hex(group_id))
    if placement_group_table(group).get("state") not in (None, "REMOVED"):
        ray.util.remove_placement_group(group)


# ------------------------------------------------------------------- the results


def trial_rows(grid: tune.ResultGrid, space: dict, settings: TuneSettings) -> list[dict]:
    """One row per trial, in the order the searcher proposed them: its status, its best
    epoch's objective, and its hyperparameters as the model saw them."""
    objective = settings.objective
    rows = []
    for result in grid:
        epochs = (
            [] if result.metrics_dataframe is None else result.metrics_dataframe.to_dict("records")
        )
        scored = [epoch for epoch in epochs if pd.notna(epoch.get(objective))]
        best = pick_best(objective)(scored, key=lambda epoch: epoch[objective]) if scored else None
        last_epoch = int(scored[-1]["epoch"]) if scored else 0
        trial_dir = TRIAL_DIR.match(Path(result.path).name)
        rows.append(
            {
                "trial": int(trial_dir["number"]),
                "trial_id": trial_dir["id"],
                "status": trial_status(result, last_epoch, settings.max_epochs),
                "epochs": last_epoch,
                "best": float(best[objective]) if best else None,
                "best_epoch": int(best["epoch"]) if best else None,
                **decode_point(space, result.config, settings.searcher),
                "checkpoint": best["checkpoint_path"] if best else None,
                "last_checkpoint": scored[-1]["checkpoint_path"] if scored else None,
            }
        )
    return sorted(rows, key=lambda row: row["trial"])


def trial_status(result: tune.Result, epochs: int, max_epochs: int) -> str:
    if result.error is not None:
        return "error"
    return "completed" if epochs >= max_epochs else "stopped early"


def export_best(
    run: RunDir,
    name: str,
    base: TrainConfig,
    settings: TuneSettings,
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
    config = point_config(base, {key: best[key] for key in models.SEARCH_SPACES[base.model]})
    out = export.export_model(
        run,
        name,
        config,
        Checkpoint(best["checkpoint"], filesystem=run.root.fs),
        Checkpoint(best["last_checkpoint"], filesystem=run.root.fs),
    )
    table = [{key: value for key, value in row.items() if "checkpoint" not in key} for row in rows]
    (out / "trials.csv").write_text(pd.DataFrame(table).to_csv(index=False))
    (out / "trials.md").write_text(reports.markdown_table(table))
    plots.plot_trials(
        table, settings.objective, MONITORS[settings.objective] == "max", out / "trials.png"
    )
    summary = {
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
    (out / "tuning.json").write_json(summary)
    return out


def format_summary(model_dir: str | os.PathLike | Location) -> str:
    """The tuning verdict in a few lines: best trial against the first (default) one."""
    model_dir = Location.of(model_dir)
    summary = (model_dir / "tuning.json").read_json()
    return (
        f"{summary['trials']} of {summary['settings']['trials']} trials "
        f"({summary['stopped_early']} stopped early by ASHA or "
        f"the time budget, {summary['errors']} failed); best: trial {summary['best_trial']}, "
        f"{summary['objective']} {summary['best_value']:.4f} at epoch {summary['best_epoch']}; "
        f"trial 1 (untuned default): {summary['first_trial_value']:.4f}\n"
        f"trials table: {model_dir / 'trials.md'}; plot: {model_dir / 'trials.png'}"
    )
