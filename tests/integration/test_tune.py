"""Ray Tune: a tiny search on synthetic posters, interrupted and resumed; search spaces."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from ray.tune import Callback
from synthetic import prepared_run

from poster_ray import models
from poster_ray.config import TrainConfig, TuneSettings
from poster_ray.errors import PosterRayError
from poster_ray.hparams import Choice
from poster_ray.layout import RunDir
from poster_ray.tune.experiment import make_searcher, tune_model
from poster_ray.tune.results import format_tuning_summary
from poster_ray.tune.space import decode_point, encode_point, param_space

# Small enough to train in seconds, still the seed's 4-block architecture (needs ~94 px).
SMALL = {**models.DEFAULT_POINTS["custom_cnn"], "batch_size": 16, "filters": 8, "dense_units": 32}
# The slowest learner in the space (lowest rate, most dropout, fewest steps): far behind
# after one epoch, so ASHA has a trial it must stop.
HOPELESS = {
    **SMALL,
    "learning_rate": 1e-4,
    "batch_size": 32,
    "conv_dropout": 0.4,
    "dense_dropout": 0.5,
}
# The search and its resume take about 340 s on their own; beside the cluster module's
# pipeline they once passed 600 s (the CI run of b56884c, trial 3 still training).
pytestmark = pytest.mark.timeout(900)
SETTINGS = TuneSettings(
    trials=3,
    max_epochs=2,
    objective="val_loss",
    start_points=[SMALL, HOPELESS],
    searcher_seed=1,
)


class InterruptAfter(Callback):
    """Press Ctrl-C once `trials` trials are done, noting the state of the last one's
    Train placement group in `marker`, which also keeps the restored copy of this
    callback (Tune pickles it with the experiment) from pressing it again."""

    def __init__(self, trials: int, marker: Path) -> None:
        self.trials, self.marker, self.done = trials, marker, 0

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        import ray
        from ray.util.placement_group import PlacementGroup, placement_group_table

        self.done += 1
        if self.done == self.trials and not self.marker.exists():
            group_id = ray.PlacementGroupID.from_hex(trial.last_result["placement_group"])
            self.marker.write_text(placement_group_table(PlacementGroup(group_id))["state"])
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(scope="module")
def run(tmp_path_factory, ray_session) -> RunDir:
    return prepared_run(tmp_path_factory.mktemp("tune"), n=240, image_size=96)


@pytest.fixture(scope="module")
def tuned(run: RunDir, tmp_path_factory) -> dict:
    """Tune 3 trials, Ctrl-C after the second, then rerun the same call to finish."""
    import ray

    marker = tmp_path_factory.mktemp("marker") / "interrupted"
    base = TrainConfig(workers=1)
    with pytest.raises(KeyboardInterrupt):  # reported by the CLI as every stage's interrupt
        tune_model(run, "tiny", base, SETTINGS, callbacks=[InterruptAfter(2, marker)])
    finished = sorted((run.root.local_path / "ray" / "tiny").glob("run_trial_*_[12]_*/result.json"))
    before = [path.read_text() for path in finished]
    # Ctrl-C ends the command and, with it, its local Ray: so here.
    ray.shutdown()
    from poster_ray.runtime import init_ray

    init_ray(num_cpus=2, progress_bars=False)
    home = Path.cwd()
    os.chdir(run.root.parent)  # and from a relative path, as users type it
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            out = tune_model(RunDir(Path(run.root.name)), "tiny", base, SETTINGS).local_path
    finally:
        os.chdir(home)
    return {
        "out": out,
        "resumed_lines": printed.getvalue(),
        "stopped_trial_workers": marker.read_text(),
        "finished_before": before,
        "finished_after": [path.read_text() for path in finished],
    }


def test_resumed_search_finishes_all_trials_without_redoing_finished_ones(tuned):
    trials = pd.read_csv(tuned["out"] / "trials.csv")
    assert list(trials["trial"]) == [1, 2, 3]
    assert len(tuned["finished_before"]) == 2
    assert tuned["finished_after"] == tuned["finished_before"]
    assert trials.loc[0, "status"] == "completed" and trials.loc[0, "epochs"] == 2
    # The trial lines' count and scores were saved with the experiment: trial 3 is 3/3.
    assert re.search(
        r"^trial 3/3 \(\w+\): val_loss \d\.\d{4} at epoch [12], ", tuned["resumed_lines"], re.M
    )


def test_asha_stops_the_hopeless_trial_and_the_searcher_proposes_new_configs(tuned):
    trials = pd.read_csv(tuned["out"] / "trials.csv")
    hopeless = trials.loc[1]
    assert hopeless["learning_rate"] == pytest.approx(1e-4)
    assert hopeless["status"] == "stopped early" and hopeless["epochs"] == 1
    space = list(models.SEARCH_SPACES["custom_cnn"])
    configs = {tuple(row) for row in trials[space].itertuples(index=False)}
    assert len(configs) == 3  # the third is TPE's own proposal
    # Its workers' CPUs were freed as it stopped (Ray would have kept them reserved).
    assert tuned["stopped_trial_workers"] == "REMOVED"


def test_best_epoch_of_best_trial_becomes_the_model_with_table_and_plot(tuned):
    out = tuned["out"]
    summary = json.loads((out / "tuning.json").read_text())
    trials = pd.read_csv(out / "trials.csv")
    assert summary["best_value"] == pytest.approx(trials["best"].min())
    best = trials.loc[trials["best"].idxmin()]
    config = json.loads((out / "train_config.json").read_text())
    assert config["learning_rate"] == pytest.approx(best["learning_rate"])
    assert config["chosen_epoch"] == best["best_epoch"]
    assert (out / "model.keras").is_file() and (out / "trials.png").stat().st_size > 1000
    assert "| trial | trial_id | status |" in (out / "trials.md").read_text()
    summary_line = format_tuning_summary(out).splitlines()[0]
    assert summary_line.startswith("3 of 3 trials (1 stopped early by ASHA or the time budget")
    assert f"best: trial {best['trial']}," in summary_line


def test_no_cpu_stays_reserved_after_tuning(tuned):
    import ray

    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == pytest.approx(2)
    groups = ray.util.placement_group_table().values()
    assert [group for group in groups if group["state"] != "REMOVED"] == []


def test_resuming_with_other_settings_is_refused(run, tuned):
    changed = replace(SETTINGS, trials=5)
    with pytest.raises(PosterRayError, match=r"other settings \(tune.trials\)"):
        tune_model(run, "tiny", TrainConfig(workers=1), changed)


@pytest.mark.parametrize("model", ["custom_cnn", "efficientnet_lite0"])  # the two spaces
@pytest.mark.parametrize("searcher", ["tpe", "gp"])
def test_searchers_propose_distinct_valid_points_that_decode_back(model, searcher):
    space = models.SEARCH_SPACES[model]
    default = models.DEFAULT_POINTS[model]
    assert decode_point(space, encode_point(space, default, searcher), searcher) == (
        pytest.approx(default)
    )
    settings = TuneSettings(trials=6, searcher=searcher, start_points=[default])
    searcher_ = make_searcher(settings, space, [default])
    assert searcher_.set_search_properties("val_pr_auc", "max", param_space(space, searcher))
    points = []
    for index in range(3):
        proposal = searcher_.suggest(f"trial_{index}")
        searcher_.on_trial_complete(f"trial_{index}", {"val_pr_auc": 0.1 * index})
        points.append(decode_point(space, proposal, searcher))
    assert points[0] == pytest.approx(default)
    assert points[1] != points[2]
    for point in points:
        for key, param in space.items():
            if isinstance(param, Choice):
                assert point[key] in param.values
            else:
                assert param.low <= point[key] <= param.high
                assert isinstance(point[key], int) == param.integer


def test_a_start_point_outside_the_space_is_refused(run):
    settings = TuneSettings(start_points=[{**SMALL, "learning_rate": 1e-7}])
    with pytest.raises(PosterRayError, match="learning_rate=1e-07 is outside the space"):
        tune_model(run, "outside", TrainConfig(), settings)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"objective": "train_precision"}, "unknown objective"),
        ({"trials": 0}, "--trials must be at least 1"),
        ({"grace_period": 3, "max_epochs": 2}, "--grace-period cannot be longer"),
        ({"searcher": "random"}, "unknown searcher"),
    ],
)
def test_bad_settings_fail_in_one_line_before_ray(tmp_path, change, message):
    settings = replace(TuneSettings(), **change)
    with pytest.raises(PosterRayError, match=message):
        tune_model(RunDir(tmp_path), "x", TrainConfig(), settings)
