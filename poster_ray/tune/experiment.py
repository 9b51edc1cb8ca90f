"""Tuning stage: Ray Tune searches a model's hyperparameters with a Bayesian searcher.

Every trial is a Ray Train run made by `trainer.make_trainer`, the code `poster-ray train`
runs, inside a Tune function trainable (the pattern Train V2 documents); it reports every
epoch, so ASHA can stop weak trials early. The first trial is the model's untuned
default, so the trials table shows what tuning bought. Rerunning the same command
resumes an interrupted experiment, and an unfinished trial resumes its Train run from
its last epoch checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, replace

from ray.tune import (
    Callback,
    CheckpointConfig,
    FailureConfig,
    RunConfig,
    TuneConfig,
    Tuner,
    with_parameters,
    with_resources,
)
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter

from poster_ray import models, train
from poster_ray.config import MONITORS, SEARCHERS, TrainConfig, TuneSettings
from poster_ray.errors import PosterRayError
from poster_ray.layout import RunDir
from poster_ray.storage import Location
from poster_ray.trainer import TrainingData
from poster_ray.tune.callbacks import ReleaseTrainWorkers, TrialLines
from poster_ray.tune.results import export_best, is_tuned, trial_rows
from poster_ray.tune.space import (
    check_in_space,
    encode_point,
    feature_choices,
    feature_combinations,
    features_key,
    limit_batch_sizes,
    param_space,
    point_config,
    with_features,
)
from poster_ray.tune.trial import run_trial

SETTINGS_FILE = "poster_ray_tune.json"
TRIAL_TRAIN_RUNS = "train_runs"  # each trial's Ray Train run, under the experiment


def tune_model(
    run: RunDir,
    name: str,
    base: TrainConfig,
    settings: TuneSettings,
    callbacks: Sequence[Callback] = (),
) -> Location:
    """Search `base.model`'s space on `run` (or resume experiment `name`), then export
    the best epoch of the best trial as model `name`; returns its model directory.

    `base` holds what is not searched (device, precision, weights); each trial runs
    `settings.workers_per_trial` Train workers.
    """
    base = trial_base(base, settings)
    check_tune_settings(base, settings)
    choices = feature_choices(base, settings)
    space = {**models.SEARCH_SPACES[base.model], **choices}
    start_points = [
        with_features(point, base, choices)
        for point in settings.start_points or [models.DEFAULT_POINTS[base.model]]
    ]
    check_start_points(run, base, space, start_points)
    experiment = run.ray_storage / name
    check_same_experiment(experiment, base, settings)
    if is_tuned(run.model(name), settings):
        print(f"reusing model {name!r}: tuned before with these settings", flush=True)
        return run.model(name).root
    # Trials at once share the nodes, or they would queue.
    base = train.place_workers(base, groups=settings.concurrency)
    # Every trial's features, cached and read before the first trial starts.
    configs = [replace(base, **features) for features in feature_combinations(choices)]
    data = {
        features_key(config): train.load_training_data(run, config, groups=settings.concurrency)
        for config in configs
    }
    fewest = min(shared.train_rows for shared in data.values())
    space = limit_batch_sizes(space, fewest * base.workers)
    for point in start_points:
        check_in_space(space, point)

    trainable = make_trainable(data, space, base, settings, experiment)
    if Tuner.can_restore(experiment.uri):
        print(f"resuming tuning experiment {experiment}")
        tuner = Tuner.restore(
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
    if finished < len(grid) or finished < settings.trials and not settings.time_budget:
        # Tune's own SIGINT handler ended the experiment gracefully (its state is saved):
        # an interrupt all the same, reported as every stage reports one.
        raise KeyboardInterrupt
    return export_best(run, name, base, settings, space, trial_rows(grid, space, settings))


def trial_base(base: TrainConfig, settings: TuneSettings) -> TrainConfig:
    """The fixed part of every trial's TrainConfig.

    ASHA is the early stopping; Tune, not Train, retries a failed trial, because a Train
    controller that restarts its workers after Tune stopped the trial would reserve a
    new placement group that nobody frees. Trials tune a transfer model's head on cached
    features: fine-tuning its backbone (`train`) is not part of a trial.
    """
    return replace(
        base,
        fine_tune_blocks=0,
        epochs=settings.max_epochs,
        workers=settings.workers_per_trial,
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
    for setting in ("trials", "max_epochs", "concurrency", "workers_per_trial", "grace_period"):
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


def make_trainable(
    data: dict[tuple, TrainingData],
    space: dict,
    base: TrainConfig,
    settings: TuneSettings,
    experiment: Location,
):
    """`run_trial` with what every trial shares (the training data of each searched
    feature combination); the trial function itself only waits on its Train run, whose
    workers hold the CPUs (Tune refuses 0)."""
    return with_resources(
        with_parameters(
            run_trial,
            data=data,
            space=space,
            base=base,
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
    callbacks: Sequence[Callback],
) -> Tuner:
    return Tuner(
        trainable,
        param_space=param_space(space, settings.searcher),
        tune_config=TuneConfig(
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
            time_budget_s=settings.time_budget,
        ),
        run_config=RunConfig(
            name=experiment.name,
            storage_path=experiment.parent.uri,
            callbacks=[ReleaseTrainWorkers(), TrialLines(settings), *callbacks],
            failure_config=FailureConfig(max_failures=TrainConfig.max_failures),
            checkpoint_config=CheckpointConfig(checkpoint_at_end=False),
            verbose=0,  # TrialLines prints one line per trial instead of Tune's tables
        ),
    )


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
            seed=settings.searcher_seed,
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
            random_state=settings.searcher_seed,
        )
    return ConcurrencyLimiter(searcher, max_concurrent=settings.concurrency)
