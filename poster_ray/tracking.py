"""Experiment tracking with MLflow, when asked (`--mlflow-uri`; the `tracking` extra).

A trained or tuned model becomes one MLflow run, logged from the driver once the model
is exported and evaluated: its training settings as parameters, its per-epoch history
as metrics by step, its test-split headline as metrics, and its bundle (with the
evaluation report) as artifacts. A tuning experiment's trials are logged as they run by
Ray's own `MLflowLoggerCallback`, one MLflow run per trial. Any tracking URI works: a
`sqlite:` file for `mlflow ui`, a tracking server on a cluster.
"""

from __future__ import annotations

import json
import logging
import numbers
import re
from pathlib import Path

from poster_ray.config import TrackingSettings
from poster_ray.errors import PosterRayError
from poster_ray.layout import ModelDir
from poster_ray.storage import Location

INSTALL_HINT = "pip install 'poster-ray[tracking]'"
# A sqlite store keeps its artifacts in this folder beside the database file, not in
# whichever folder the command ran from (MLflow's default).
SQLITE_ARTIFACTS = "mlartifacts"


def mlflow_module():
    """MLflow, quiet below warnings; one clear line when the extra is not installed."""
    try:
        import mlflow
    except ImportError:
        raise PosterRayError(f"--mlflow-uri needs MLflow: {INSTALL_HINT}") from None
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return mlflow


def use_experiment(settings: TrackingSettings) -> str:
    """Point MLflow at the settings' store and experiment (made if new); its id."""
    mlflow = mlflow_module()
    mlflow.set_tracking_uri(settings.mlflow_uri)
    experiment = mlflow.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(
        settings.mlflow_experiment, artifact_location=artifact_location(settings.mlflow_uri)
    )


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a sqlite file, else the store's
    default."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri.removeprefix("sqlite:///"))
    return (database.parent / SQLITE_ARTIFACTS).resolve().as_uri()


def metric_name(name: str) -> str:
    """An MLflow metric name: "micro_f1@0.5" -> "micro_f1_at_0.5" (MLflow refuses "@")."""
    return re.sub(r"[^\w\-. /]", "_", name.replace("@", "_at_"))


def epoch_metrics(history: list[dict]) -> list[tuple[int, dict[str, float]]]:
    """(epoch, numeric metrics) per history entry; bookkeeping such as worker counts out."""
    skip = {"epoch", "workers", "workers_on_node"}
    return [
        (
            int(entry.get("epoch", step + 1)),
            {
                metric_name(key): float(value)
                for key, value in entry.items()
                if key not in skip
                and isinstance(value, numbers.Real)
                and not isinstance(value, bool)
            },
        )
        for step, entry in enumerate(history)
    ]


def headline_metrics(headline: dict) -> dict[str, float]:
    """The evaluation headline's numbers, as test_* metrics."""
    return {
        "test_" + metric_name(key): float(value)
        for key, value in headline.items()
        if isinstance(value, numbers.Real)
    }


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """Nested settings as MLflow parameters: {"hparams": {"units": 8}} -> hparams.units."""
    params = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            params.update(flat_params(value, f"{prefix}{key}."))
        else:
            params[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return params


def log_model(settings: TrackingSettings, model_dir: Location, stage: str) -> str | None:
    """Log an exported, evaluated model as one MLflow run (see the module docstring);
    returns its run id, or None when tracking is off."""
    if not settings.mlflow_uri:
        return None
    mlflow = mlflow_module()
    model = ModelDir(model_dir)
    experiment = use_experiment(settings)
    tags = {"poster_ray.stage": stage, "poster_ray.model_dir": model.root.uri}
    with mlflow.start_run(experiment_id=experiment, run_name=model.name, tags=tags) as run:
        if model.train_config.is_file():
            mlflow.log_params(flat_params(model.train_config.read_json()))
        if model.history.is_file():
            for epoch, values in epoch_metrics(model.history.read_json()):
                mlflow.log_metrics(values, step=epoch)
        if model.metrics.is_file():
            mlflow.log_metrics(headline_metrics(model.metrics.read_json()["headline"]))
            mlflow.log_text(model.report.read_text(), model.report.name)
        with model.bundle.local_copy() as bundle:
            mlflow.log_artifacts(str(bundle), model.bundle.name)
    print(f"mlflow: logged {model.name} as run {run.info.run_id} in {settings.mlflow_uri}")
    return run.info.run_id


def tune_callbacks(settings: TrackingSettings) -> list:
    """Ray's MLflow callback for a tuning experiment's trials, or none when tracking is off."""
    if not settings.mlflow_uri:
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    use_experiment(settings)  # made here, so that its artifacts go where ours do
    return [
        MLflowLoggerCallback(
            tracking_uri=settings.mlflow_uri,
            experiment_name=settings.mlflow_experiment,
            tags={"poster_ray.stage": "tune trial"},
        )
    ]
