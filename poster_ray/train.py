"""Training stage: a Keras model on N Ray Train workers, checkpointed every epoch.

Workers read decoded posters from the run's cache (no JPEG decoding in epochs), or, for
a transfer model, its frozen backbone's cached features: the head trains in seconds per
epoch, is joined to the backbone, and can then be fine-tuned with the backbone's top
blocks unfrozen. Every epoch is a checkpoint on the run's storage, so a rerun with the
same name, or a restarted worker, continues from the last one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, replace

import ray

from poster_ray import export, models, resources
from poster_ray.bundle import FORMAT_VERSION, INFO_FILE, bundle_info
from poster_ray.config import MONITORS, TrainConfig
from poster_ray.data.cache import ensure_decoded, load_split, split_sizes, train_labels
from poster_ray.data.context import ordered_execution
from poster_ray.errors import PosterRayError
from poster_ray.features import FeatureCache, ensure_joined_features
from poster_ray.layout import ModelDir, RunDir
from poster_ray.loop_config import ModelInputs
from poster_ray.models.losses import positive_weights
from poster_ray.runtime import interruptible, without_progress_bars
from poster_ray.storage import Location
from poster_ray.tf_import import keras
from poster_ray.train_worker import PLACEMENT_GROUP_KEY, build_configured_model
from poster_ray.trainer import (
    TrainingData,
    make_trainer,
    share_block_rows,
    smallest_share,
    worker_datasets,
)

# What other stages use: tune runs its trials through the same data and checks
# (and trainer.make_trainer).
__all__ = [
    "PLACEMENT_GROUP_KEY",
    "check_model_builds",
    "check_settings",
    "fine_tune",
    "fit",
    "input_size",
    "is_trained",
    "load_training_data",
    "place_workers",
    "read_training_splits",
    "train",
]


def train(run: RunDir, name: str, config: TrainConfig) -> Location:
    """Train (or resume) run `name` on the prepared `run`; returns its model directory.

    A model that `run` already holds from these settings is reused as it is: exporting it
    again would make a new file, and so a new bundle that earlier predictions do not match.
    """
    check_settings(config)
    if is_trained(run, name, config):
        print(f"reusing model {name!r}: trained before with these settings", flush=True)
        return run.model(name).root
    if is_trained(run, name, config, ignoring=EXPORT_SETTINGS):
        print(
            f"reusing model {name!r}: trained before with these settings; exporting its "
            f"bundle again with threshold policy {config.threshold_policy!r} and "
            f"{config.test_views} test view(s)",
            flush=True,
        )
        changed = {key: getattr(config, key) for key in EXPORT_SETTINGS}
        return export.export_again(run, run.model(name), changed)
    check_model_builds(run, config)
    config = place_workers(config)
    print(
        f"training {config.model} as {name!r}: {config.workers} worker(s) x "
        f"{config.cpus_per_worker:g} CPUs{' + 1 GPU' if config.gpu else ''}, "
        f"precision {config.precision}, up to {config.epochs} epochs",
        flush=True,
    )
    out = fit(run, name, config, load_training_data(run, config))
    if models.is_transfer(config.model) and config.fine_tune_blocks:
        out = fine_tune(run, name, config, out)
    return out


# Settings that say where a run trained, not what it learned: a resubmission to another
# cluster may place it differently and still reuse the model.
PLACEMENT_SETTINGS = ("workers", "cpus_per_worker", "max_failures", "in_memory")
# Settings of the export step alone: a change exports the trained model's bundle again.
EXPORT_SETTINGS = ("threshold_policy", "test_views")


def is_trained(run: RunDir, name: str, config: TrainConfig, ignoring: tuple[str, ...] = ()) -> bool:
    """Whether model `name` of `run` was exported from `config` (its last export, after
    fine-tuning where `config` fine-tunes), but for the settings it is `ignoring`."""
    model_dir = run.model(name)
    # The bundle is the export's last file: without it the export did not finish. One
    # of an older format (or damaged) is exported again.
    if not (model_dir.train_config.is_file() and (model_dir.bundle / INFO_FILE).is_file()):
        return False
    try:
        if bundle_info(model_dir.bundle).get("format_version") != FORMAT_VERSION:
            return False
    except PosterRayError:
        return False
    if models.is_transfer(config.model) and config.fine_tune_blocks:
        config = fine_tune_config(config)
    # A setting added since the model was trained reads as its default, which the model
    # was trained with.
    recorded = {**as_json(TrainConfig()), **model_dir.train_config.read_json()}
    wanted = as_json(config)
    return all(
        recorded.get(key) == value
        for key, value in wanted.items()
        if key not in (*PLACEMENT_SETTINGS, *ignoring)
    )


def as_json(config: TrainConfig) -> dict:
    """`config` as it reads back from its train_config.json."""
    return json.loads(json.dumps(asdict(config)))


def fit(
    run: RunDir,
    name: str,
    config: TrainConfig,
    data: TrainingData,
    ray_run: str | None = None,
    prior_history: Sequence[dict] = (),
    head_weights: list | None = None,
) -> Location:
    """One Ray Train run (`ray_run`, default `name`) of `config` on `data`, then its
    export as model `name` (poster_ray.export)."""
    ray_run = ray_run or name
    trainer = make_trainer(data, config, ray_run, run.ray_storage, head_weights=head_weights)
    try:
        result = interruptible(trainer.fit)
    except ray.train.TrainingFailedError as error:
        last_line = str(error).strip().splitlines()[-1]
        raise PosterRayError(
            f"training run {ray_run!r} failed ({last_line}); logs and checkpoints are in "
            f"{run.ray_storage / ray_run}"
        ) from None
    if result.checkpoint is None:
        raise PosterRayError(f"training run {ray_run!r} reported no checkpoint")
    chosen = export.best_checkpoint(result, config.monitor) if config.early_stopping else None
    return export.export_model(
        run, name, config, chosen or result.checkpoint, result.checkpoint, prior_history
    )


def fine_tune(run: RunDir, name: str, config: TrainConfig, head_dir: Location) -> Location:
    """Train the joined model with the backbone's top blocks unfrozen, starting from the
    trained head, on decoded posters with augmentation; exported under the same name,
    its history after the head's."""
    head = ModelDir(head_dir)
    with head.model.local_copy() as path:
        head_weights = models.load_model(path).get_layer("head").get_weights()
    keras.backend.clear_session()
    history = head.history.read_json()
    tuned = fine_tune_config(config)
    print(
        f"fine-tuning the top {config.fine_tune_blocks} block(s) of {config.model} for up to "
        f"{tuned.epochs} epochs",
        flush=True,
    )
    data = load_training_data(run, tuned, features=False)
    return fit(run, name, tuned, data, f"{name}-fine-tune", history, head_weights)


def fine_tune_config(config: TrainConfig) -> TrainConfig:
    """The settings of the fine-tuning run that follows the head's training."""
    return replace(
        config, epochs=config.fine_tune_epochs, learning_rate=config.fine_tune_learning_rate
    )


def load_training_data(
    run: RunDir, config: TrainConfig, features: bool = True, groups: int = 1
) -> TrainingData:
    """Decoded posters at the model's input size, or, for a transfer model's head (with
    `features`), its backbone's cached features, dealt out to `config`'s workers."""
    splits, inputs = read_training_splits(run, config, features, groups)
    with without_progress_bars(), ordered_execution():
        datasets = worker_datasets(splits["train"], splits["val"], config.workers, config.seed)
    return TrainingData(
        datasets=datasets,
        train_rows=smallest_share(datasets, "train", config.workers),
        val_rows=smallest_share(datasets, "val", config.workers),
        inputs=inputs,
        loss_weights=positive_weights(train_labels(run)),
    )


def read_training_splits(
    run: RunDir, config: TrainConfig, features: bool = True, groups: int = 1
) -> tuple[dict[str, ray.data.Dataset], ModelInputs]:
    """The training and validation splits as datasets not yet executed, and what they
    hold.

    Their tasks ask for what `config`'s placed workers (`groups` runs of them) leave on
    a node: a block lost with its node is rebuilt by running them again while the
    workers train. Their blocks hold about share_block_rows rows."""
    cache = feature_cache(run, config) if features else None
    size = input_size(run, config)
    task_cpus = worker_plan(config, groups).task_cpus
    sizes = split_sizes(run)
    if cache is None:
        ensure_decoded(run, size)

    def read(split: str) -> ray.data.Dataset:
        rows = sizes[split] * (len(cache.split_parts(split)) if cache is not None else 1)
        block_rows = share_block_rows(rows, config.workers)
        if cache is not None:
            return cache.split(split, task_cpus, block_rows)
        return load_split(run, split, size, task_cpus, block_rows)

    # Datasets carry the context they were made in: no iteration progress bars in the
    # workers, whose per-epoch lines say more and cost the driver less; blocks in the
    # cache's order, so each worker gets the same share on every run.
    with without_progress_bars(), ordered_execution():
        splits = {split: read(split) for split in ("train", "val")}
    column, shape = ("features", (cache.dims,)) if cache is not None else ("image", (size, size, 3))
    return splits, ModelInputs(column, shape, len(run.load_genres()))


def feature_cache(run: RunDir, config: TrainConfig) -> FeatureCache | None:
    """A transfer model's backbone features, when its head is what trains: every
    poster's, and those of `config.views - 1` more views of each training poster,
    computed where missing."""
    if not models.is_transfer(config.model):
        return None
    backbones = [config.model, *config.more_backbones]
    size = input_size(run, config)

    def of_view(view: int) -> FeatureCache:
        return ensure_joined_features(run, backbones, size, config.weights, config.pooling, view)

    more = tuple(of_view(view).location for view in range(1, config.views))
    return replace(of_view(0), more_views=more)


def input_size(run: RunDir, config: TrainConfig) -> int:
    """The CNN trains at the run's size; a transfer model at its backbone's native
    resolution unless told otherwise."""
    return models.input_size(config.model, run.load_spec().image_size, config.input_size)


def check_settings(config: TrainConfig) -> None:
    """Settings errors in one line, before Ray starts anything."""
    for setting in ("workers", "epochs", "batch_size"):
        value = getattr(config, setting)
        if value is not None and value < 1:
            raise PosterRayError(f"--{setting.replace('_', '-')} must be at least 1")
    if config.monitor not in MONITORS:
        raise PosterRayError(f"unknown monitor {config.monitor!r}; choose one of {list(MONITORS)}")
    resources.resolve_precision(config.precision, config.gpu, native_bfloat16=False)
    models.make_loss(config.loss, [1.0])
    check_batch_covers_workers(config)
    check_more_backbones(config)
    if config.views > 1 and not models.is_transfer(config.model):
        raise PosterRayError(f"--views needs a pretrained model, not {config.model}")


def check_more_backbones(config: TrainConfig) -> None:
    if not config.more_backbones:
        return
    if not models.is_transfer(config.model):
        raise PosterRayError(f"--more-backbones needs a pretrained model, not {config.model}")
    if config.weights not in ("imagenet", "none"):
        raise PosterRayError(
            "--weights FILE holds one backbone's weights: with --more-backbones, "
            "use imagenet or none"
        )
    models.backbone_models(config.model, config.more_backbones)


def check_batch_covers_workers(config: TrainConfig) -> None:
    if config.workers is not None and config.batch_size < config.workers:
        raise PosterRayError(
            f"--batch-size {config.batch_size} is smaller than --workers {config.workers}: "
            "every worker needs at least one poster per step"
        )


def worker_plan(config: TrainConfig, groups: int = 1) -> resources.WorkerPlan:
    """The plan of `config`'s workers on the cluster's nodes (`groups` runs at once share
    them: tuning trials)."""
    return resources.plan_workers(
        resources.alive_nodes(),
        "training",
        workers=config.workers,
        gpu=config.gpu,
        cpus_per_worker=config.cpus_per_worker,
        groups=groups,
    )


def place_workers(config: TrainConfig, groups: int = 1) -> TrainConfig:
    """`config` with its worker count and CPUs per worker fixed from the cluster's nodes."""
    plan = worker_plan(config, groups)
    placed = replace(config, workers=plan.workers, cpus_per_worker=plan.cpus_per_worker)
    check_batch_covers_workers(placed)
    return placed


def check_model_builds(run: RunDir, config: TrainConfig) -> None:
    """Build the model once in the driver, so a bad setting fails here, in one line,
    instead of in every worker and every retry. A transfer model builds without its
    weights: they are checked where they load."""
    size = input_size(run, config)
    inputs = ModelInputs("image", (size, size, 3), len(run.load_genres()))
    try:
        build_configured_model(replace(config, weights="none"), inputs)
    except (ValueError, TypeError) as error:
        message = str(error).strip().splitlines()[0]
        raise PosterRayError(
            f"cannot build {config.model} for {size}x{size} posters "
            f"with hparams {config.hparams}: {message}"
        ) from None
    finally:
        keras.backend.clear_session()
