"""Export step: a Ray Train run's chosen epoch becomes a model directory.

The chosen checkpoint's model is saved as one float32 model on uint8 posters (a head
trained on cached features is joined to its backbone), beside the full history, its
curves, the training config and a bundle that inference loads. The bundle's per-genre
thresholds are set on the validation split by the threshold policy (poster_ray.thresholds),
never on the test split that evaluate scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, replace

import numpy as np
import ray.train

from poster_ray import metrics, models
from poster_ray.bundle import check_model_matches, write_bundle
from poster_ray.config import AUTO_THRESHOLD_POLICY, TrainConfig, pick_best
from poster_ray.evaluate import predict_split
from poster_ray.layout import HISTORY_FILE, MODEL_FILE, ModelDir, RunDir
from poster_ray.models.views import with_test_views
from poster_ray.plots import plot_history
from poster_ray.storage import Location
from poster_ray.tf_import import keras
from poster_ray.thresholds import choose_thresholds


def best_checkpoint(result: ray.train.Result, monitor: str) -> ray.train.Checkpoint | None:
    """The kept checkpoint with the best `monitor` value: early stopping's best weights."""
    scored = [(scores[monitor], ckpt) for ckpt, scores in result.best_checkpoints]
    if not scored:
        return None
    return pick_best(monitor)(scored, key=lambda pair: pair[0])[1]


def export_model(
    run: RunDir,
    name: str,
    config: TrainConfig,
    chosen: ray.train.Checkpoint,
    latest: ray.train.Checkpoint,
    prior_history: Sequence[dict] = (),
) -> Location:
    """Model `name` from the `chosen` epoch's checkpoint, with the history up to the
    `latest` one (after `prior_history`: a fine-tuned model's head epochs), its curves,
    the training config and the bundle; returns the model directory. The training
    precision stays in train_config.json."""
    out = run.model(name)
    model, chosen_epoch = save_float32_model(run, config, chosen, out)
    # Fine-tuning continues the head's epochs: one history, numbered on.
    offset = len(prior_history)
    history = [*prior_history, *renumbered(checkpoint_history(latest), offset)]
    out.history.write_json(history)
    out.train_config.write_json(
        {
            **asdict(config),
            "name": name,
            "chosen_epoch": chosen_epoch + offset,
            "trained_in": history[-1].get("compute_precision"),
        }
    )
    plot_history({key: [epoch.get(key) for epoch in history] for key in history[-1]}, out)
    export_bundle(run, out, model)
    return out.root


def save_float32_model(
    run: RunDir, config: TrainConfig, checkpoint: ray.train.Checkpoint, out: ModelDir
) -> tuple[keras.Model, int]:
    """Save the checkpoint's model as `out.model`, float32 on uint8 posters; returns that
    model and the checkpoint's epoch."""
    with checkpoint.as_directory() as directory, out.model.written_locally() as path:
        model = models.load_model(f"{directory}/{MODEL_FILE}")
        epoch = Location.of(f"{directory}/{HISTORY_FILE}").read_json()[-1]["epoch"]
        if len(model.input_shape) == 2:  # a head, trained on features
            model = join_head(config, run, model)
        model = models.with_precision(model, "float32")
        model.save(path, save_format="keras_v3")
    return model, epoch


def checkpoint_history(checkpoint: ray.train.Checkpoint) -> list[dict]:
    """Every epoch's metrics up to `checkpoint`, as its worker saved them."""
    with checkpoint.as_directory() as directory:
        return Location.of(f"{directory}/{HISTORY_FILE}").read_json()


def renumbered(history: list[dict], offset: int) -> list[dict]:
    return [{**epoch, "epoch": epoch["epoch"] + offset} for epoch in history]


def join_head(config: TrainConfig, run: RunDir, head: keras.Model) -> keras.Model:
    """The transfer model on uint8 posters: the backbone with its weights, and `head`."""
    model = models.build_model(
        config.model,
        len(run.load_genres()),
        models.input_size(config.model, run.load_spec().image_size, config.input_size),
        weights=config.weights,
        pooling=config.pooling,
        more_backbones=config.more_backbones,
        **config.hparams,
    )
    model.get_layer("head").set_weights(head.get_weights())
    return model


def export_again(run: RunDir, model_dir: ModelDir, settings: dict) -> Location:
    """Record export `settings` (the threshold policy, the test views) in the trained
    model's train_config.json and write its bundle again: the thresholds change, the
    model does not."""
    # Without its bundle the model counts as not yet exported: an interruption from here
    # on is finished by the next run of the same command, never left with old thresholds.
    model_dir.bundle.remove()
    model_dir.train_config.write_json({**model_dir.train_config.read_json(), **settings})
    export_bundle(run, model_dir)
    return model_dir.root


def export_bundle(run: RunDir, model_dir: ModelDir, model: keras.Model | None = None) -> Location:
    """Write `model_dir.bundle`: its model beside the run's genres, the preprocessing
    spec at the model's own input size (a pretrained backbone's native resolution, say)
    and thresholds set on the validation split by the model's threshold policy.

    `model` is the model just saved as `model_dir.model`, when the caller holds it:
    loading a backbone's .keras file again takes seconds.
    """
    genres = run.load_genres()
    if model is None:
        with model_dir.model.local_copy() as path:
            model = models.load_model(path)
    spec = replace(run.load_spec(), image_size=model.input_shape[1])
    check_model_matches(model, len(genres), spec, model_dir.model)
    train_config = model_dir.train_config.read_json() if model_dir.train_config.is_file() else {}
    # Thresholds for the predictions evaluation makes: averaged over the test views.
    tested = with_test_views(model, train_config.get("test_views", 1))
    _, labels, probabilities = predict_split(tested, run, "val")
    keras.backend.clear_session()
    requested = train_config.get("threshold_policy", AUTO_THRESHOLD_POLICY)
    thresholds, policy = choose_thresholds(requested, labels, probabilities)
    name = model_dir.name
    bundle_config = {**train_config, "model": train_config.get("model", name), "name": name}
    calibration = calibration_summary(labels, probabilities, thresholds, genres)
    return write_bundle(
        model_dir.bundle,
        model_dir.model,
        genres,
        spec,
        thresholds,
        bundle_config,
        calibration,
        threshold_policy=policy,
    )


def calibration_summary(
    labels: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray, genres: list[str]
) -> dict:
    """What the thresholds did on the posters they were calibrated on (optimistic)."""

    def micro_f1(cutoffs: float | np.ndarray) -> float:
        return metrics.classification_metrics(labels, probabilities, cutoffs, genres)["micro"]["f1"]

    return {
        "split": "val",
        "posters": len(labels),
        "micro_f1@0.5": micro_f1(0.5),
        "micro_f1@calibrated": micro_f1(thresholds),
    }
