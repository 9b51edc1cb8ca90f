"""What experiment tracking sends to MLflow, worked out without MLflow."""

from __future__ import annotations

from poster_ray.config import TrackingSettings
from poster_ray.tracking import (
    artifact_location,
    epoch_metrics,
    flat_params,
    headline_metrics,
    log_model,
    metric_name,
    tune_callbacks,
)


def test_metric_names_are_ones_mlflow_accepts():
    assert metric_name("micro_f1@calibrated") == "micro_f1_at_calibrated"
    assert metric_name("val_loss") == "val_loss"


def test_epoch_metrics_keep_numbers_by_epoch_and_drop_bookkeeping():
    history = [
        {"epoch": 1, "loss": 0.5, "workers": 2, "compute_precision": "float32"},
        {"epoch": 2, "loss": 0.4, "workers": 2, "compute_precision": "float32"},
    ]
    assert epoch_metrics(history) == [(1, {"loss": 0.5}), (2, {"loss": 0.4})]


def test_test_metrics_take_the_headline_numbers_only():
    headline = {"model": "m", "micro_f1@0.5": 0.4, "beats_baseline": True, "test_posters": 9}
    metrics = headline_metrics(headline)
    assert metrics["test_micro_f1_at_0.5"] == 0.4 and metrics["test_test_posters"] == 9
    assert "test_model" not in metrics


def test_nested_settings_become_dotted_params():
    params = flat_params({"model": "cnn", "epochs": 3, "hparams": {"units": 8}, "weights": None})
    assert params == {"model": "cnn", "epochs": "3", "hparams.units": "8", "weights": "null"}


def test_a_sqlite_store_keeps_its_artifacts_beside_the_database(tmp_path):
    location = artifact_location(f"sqlite:///{tmp_path}/mlflow.db")
    assert location == (tmp_path / "mlartifacts").as_uri()
    assert artifact_location("http://tracking:5000") is None


def test_tracking_is_off_by_default():
    assert log_model(TrackingSettings(), "/nowhere", "train") is None
    assert tune_callbacks(TrackingSettings()) == []
