"""Experiment tracking against a local MLflow store: a run appears with its metrics and
its bundle; tuning trials appear through Ray's callback."""

from __future__ import annotations

import json

import pytest

from poster_ray.config import TrackingSettings
from poster_ray.tracking import artifact_location, log_model, tune_callbacks

mlflow = pytest.importorskip("mlflow", reason="needs the tracking extra")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> TrackingSettings:
    """One sqlite store for the module: making its tables takes seconds."""
    database = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    return TrackingSettings(mlflow_uri=f"sqlite:///{database}", mlflow_experiment="tests")


def fake_model_dir(root):
    model = root / "tiny"
    (model / "bundle").mkdir(parents=True)
    (model / "bundle" / "bundle.json").write_text("{}")
    (model / "train_config.json").write_text(json.dumps({"model": "custom_cnn", "epochs": 2}))
    (model / "history.json").write_text(
        json.dumps([{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": 0.4}])
    )
    headline = {"model": "tiny", "micro_f1@calibrated": 0.45, "beats_baseline": True}
    (model / "metrics.json").write_text(json.dumps({"headline": headline}))
    (model / "report.md").write_text("# Evaluation report\n")
    return model


def test_a_model_appears_with_params_metrics_by_epoch_and_its_bundle(store, tmp_path):
    run_id = log_model(store, fake_model_dir(tmp_path), "train")
    client = mlflow.tracking.MlflowClient(store.mlflow_uri)
    run = client.get_run(run_id)
    assert run.info.run_name == "tiny" and run.data.tags["poster_ray.stage"] == "train"
    assert run.data.params == {"model": "custom_cnn", "epochs": "2"}
    assert run.data.metrics["test_micro_f1_at_calibrated"] == 0.45
    history = client.get_metric_history(run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.4)]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"bundle", "report.md"} <= artifacts
    assert [a.path for a in client.list_artifacts(run_id, "bundle")] == ["bundle/bundle.json"]
    assert run.info.artifact_uri.startswith(artifact_location(store.mlflow_uri))


@pytest.mark.usefixtures("ray_session")
def test_tuning_trials_are_logged_by_rays_callback(store, tmp_path):
    from ray import tune

    def trainable(config):
        for step in range(2):
            tune.report({"score": config["x"] * (step + 1)})

    tuner = tune.Tuner(
        trainable,
        param_space={"x": tune.grid_search([1, 2])},
        run_config=tune.RunConfig(
            storage_path=str(tmp_path), callbacks=tune_callbacks(store), verbose=0
        ),
    )
    tuner.fit()
    client = mlflow.tracking.MlflowClient(store.mlflow_uri)
    experiment = client.get_experiment_by_name(store.mlflow_experiment)
    trials = client.search_runs(
        [experiment.experiment_id], "tags.`poster_ray.stage` = 'tune trial'"
    )
    assert sorted(run.data.metrics["score"] for run in trials) == [2, 4]
