"""Constants, the preprocessing spec and every stage's settings: one source of truth.

Each stage's settings are one frozen dataclass whose fields carry their default and
their help text (`setting`); the command line is generated from them (options.py),
the pipeline's profiles are instances of them, and Ray workers receive them as they are.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from poster_ray.errors import RunFailure
from poster_ray.resources import AUTO_PRECISION, PRECISIONS
from poster_ray.storage import Location

DATASET_URL = "https://github.com/laxmimerit/Movies-Poster_Dataset"
DEFAULT_DATA_DIR = Path("data/Movies-Poster_Dataset")
DATA_ENV_VAR = "POSTER_DATA"

ID_COLUMN = "Id"
# Columns of train.csv that are not genres: the Genre list-string repeats the one-hot
# columns, and N/A flags posters without a genre (those rows are excluded).
NON_GENRE_COLUMNS = ("Id", "Genre", "N/A")
NA_COLUMN = "N/A"

# The report's CNN, then transfer models named after their backbone (models.backbones).
TRANSFER_MODELS = (
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "vgg16",
    "resnet50",
)
MODEL_NAMES = ("custom_cnn", *TRANSFER_MODELS)

SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}
SPLITS = tuple(SPLIT_FRACTIONS)


def setting(
    default: Any = None,
    help: str = "",
    *,
    choices: tuple | None = None,
    factory: Any = None,
    minimum: float | None = None,
    above: float | None = None,
) -> Any:
    """A settings field: its default (or `factory` for a mutable one), the help text of
    its command-line flag `--field-name`, and the values it may take (`choices`; a number
    at least `minimum`, or greater than `above`), checked as the flag is read."""
    metadata = {"help": help, "choices": choices, "minimum": minimum, "above": above}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class PreprocessSpec:
    """How a poster file becomes a model input, saved with every run and model bundle.

    Decoding yields RGB uint8 pixels at ``image_size`` x ``image_size`` (squashed, not
    cropped, as in the seed report). Scaling to model units happens inside the model's
    first layer, so training and inference cannot disagree on it and the cache stays
    uint8 (4x smaller than float32).
    """

    image_size: int = 250
    resample: str = "bilinear"

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)

    def save(self, location: Location) -> None:
        location.write_json(asdict(self))

    @classmethod
    def load(cls, location: Location) -> PreprocessSpec:
        return cls.checked(location.read_json(), location)

    @classmethod
    def checked(cls, value: Any, source: object) -> PreprocessSpec:
        """The spec a file holds, each field checked: one line naming `source` otherwise."""
        size = value.get("image_size") if isinstance(value, dict) else None
        valid = (
            isinstance(value, dict)
            and set(value) == {"image_size", "resample"}
            and isinstance(size, int)
            and not isinstance(size, bool)
            and size >= 1
            and value["resample"] in RESAMPLING
        )
        if not valid:
            raise RunFailure(
                f"{source}: not a preprocessing spec (image_size >= 1, resample one of "
                f"{RESAMPLING}): {json.dumps(value)[:120]}"
            )
        return cls(**value)


# The resampling filters a spec may name (images.py maps each to Pillow's).
RESAMPLING = ("bilinear", "bicubic")


def checked_genres(value: Any, source: object) -> list[str]:
    """A genre list read from a file: distinct, non-empty names; one line otherwise."""
    valid = (
        isinstance(value, list)
        and value
        and all(isinstance(name, str) and name for name in value)
        and len(set(value)) == len(value)
    )
    if not valid:
        raise RunFailure(f"{source}: not a list of distinct genre names: {json.dumps(value)[:120]}")
    return value


# Validation metrics that can pick the best epoch or trial, with their direction. None of
# them rewards predicting nothing: val_pr_auc is Keras' micro-averaged precision-recall
# AUC (close to micro average precision), val_micro_f1 is micro-F1 at 0.5.
MONITORS = {"val_loss": "min", "val_pr_auc": "max", "val_micro_f1": "max"}


def pick_best(monitor: str):
    """`min` or `max`: the builtin that picks the best value of `monitor`."""
    return min if MONITORS[monitor] == "min" else max


# Multi-label losses (models.losses): plain, positive-weighted per genre, focal, asymmetric.
LOSSES = ("bce", "weighted_bce", "focal", "asymmetric")

# How a pretrained backbone's last feature map becomes features (models.pooling); the
# first is what ImageNet classifiers use, and every cache made before the choice existed.
POOLINGS = ("avg", "max", "gem", "avg+max")


@dataclass(frozen=True)
class PosterView:
    """One fixed view of a poster (models.views): the part of it kept, as a box of
    fractions (top, left, bottom, right) stretched back to the full size, mirrored or
    not, and its contrast scaled about its mean. Fixed, not random: a head trains on
    each view's cached features, and test-time augmentation averages the same views."""

    name: str
    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    mirror: bool = False
    contrast: float = 1.0


# The views of `--views K` and `--test-views K` are the first K, the poster itself
# first. Posters put titles and faces near the edges: crops keep 88% of each side.
POSTER_VIEWS = (
    PosterView("poster"),
    PosterView("mirror", mirror=True),
    PosterView("zoom", box=(0.06, 0.06, 0.94, 0.94)),
    PosterView("mirror zoom", box=(0.06, 0.06, 0.94, 0.94), mirror=True),
    PosterView("top", box=(0.0, 0.06, 0.88, 0.94)),
    PosterView("mirror bottom", box=(0.12, 0.06, 1.0, 0.94), mirror=True),
    PosterView("more contrast", contrast=1.3),
    PosterView("mirror, less contrast", mirror=True, contrast=0.75),
)
VIEW_COUNTS = tuple(range(1, len(POSTER_VIEWS) + 1))


# How validation posters set a bundle's thresholds (poster_ray.thresholds): auto picks one
# of the others by cross-validation; the others in order of preference on a tie.
AUTO_THRESHOLD_POLICY = "auto"
THRESHOLD_POLICIES = (AUTO_THRESHOLD_POLICY, "global", "shrunk", "per_genre")

SEARCHERS = ("tpe", "gp")  # Optuna's TPE; Gaussian-process BayesOptSearch

PRECISION_HELP = "auto: float16 on a GPU, bfloat16 on a CPU that has it natively, else float32"


def num_cpus_setting() -> Any:
    """The one definition of --num-cpus, for every stage that may start a local Ray."""
    return setting(None, "CPUs for a local Ray (default: all); ignored inside a cluster", minimum=1)


@dataclass(frozen=True)
class PrepareSettings:
    """What the prepare stage reads, where it writes, and how it samples and splits."""

    data: str | None = setting(None, "dataset folder (train.csv + Images/); default $POSTER_DATA")
    out: str = setting("runs/latest", "run directory to write: a path or a URI")
    image_size: int = setting(
        PreprocessSpec.image_size, "poster size in pixels (square)", minimum=1
    )
    seed: int = setting(42, "seed of the sample and of the train/val/test split")
    limit: int | None = setting(None, "use a random sample of this many posters", minimum=10)
    num_cpus: int | None = num_cpus_setting()


@dataclass(frozen=True)
class RaySettings:
    """The local Ray of `train` and `tune` (the other stages' settings hold num_cpus)."""

    num_cpus: int | None = num_cpus_setting()


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved with its model."""

    model: str = setting("custom_cnn", "the model to train", choices=MODEL_NAMES)
    epochs: int = setting(10, "epochs at most", minimum=1)
    batch_size: int = setting(32, "global batch: split evenly across the workers", minimum=1)
    learning_rate: float = setting(1e-3, "Adam's learning rate", above=0)
    workers: int | None = setting(
        None,
        "training workers (default: one per node with CPUs, one per GPU with --gpu)",
        minimum=1,
    )
    gpu: bool = setting(False, "a GPU per worker")
    cpus_per_worker: float | None = setting(
        None,
        "CPUs each worker reserves (default: an equal share of each node's CPUs)",
        above=0,
    )
    precision: str = setting(AUTO_PRECISION, PRECISION_HELP, choices=PRECISIONS)
    early_stopping: int = setting(
        3, "patience in epochs on --monitor, keeping the best epoch; 0 turns it off", minimum=0
    )
    monitor: str = setting("val_loss", "picks the best epoch", choices=tuple(MONITORS))
    loss: str = setting("bce", "the multi-label loss (models.losses)", choices=LOSSES)
    hparams: dict = setting(help="model hyperparameters as a JSON object", factory=dict)
    weights: str = setting("imagenet", "pretrained models: imagenet, none or a weights file")
    input_size: int | None = setting(
        None,
        "pretrained models: poster size (default: the backbone's native resolution)",
        minimum=1,
    )
    more_backbones: list = setting(
        help="pretrained models: more backbones (a JSON list of model names) whose features "
        "join the model's own under its one head, every backbone on the same posters",
        factory=list,
    )
    pooling: str = setting(
        POOLINGS[0],
        "pretrained models: the backbone's features, averaged over the poster, its maximum, "
        "a generalised mean (GeM, p=3), or average and maximum side by side",
        choices=POOLINGS,
    )
    views: int = setting(
        1,
        "pretrained models: views of each training poster (the poster, its mirror image, "
        "crops, contrast; config.POSTER_VIEWS) whose cached features the head trains on",
        choices=VIEW_COUNTS,
    )
    test_views: int = setting(
        1,
        "views of each poster whose predictions evaluation averages (test-time "
        "augmentation), the first of the same views; saved in the bundle",
        choices=VIEW_COUNTS,
    )
    fine_tune_blocks: int = setting(
        0,
        "pretrained models: top backbone blocks to unfreeze after the head (all of them, "
        "17 for Lite0: the whole backbone but its stem); 0: frozen",
        minimum=0,
    )
    fine_tune_epochs: int = setting(3, "epochs of fine-tuning, at most", minimum=1)
    fine_tune_learning_rate: float = setting(1e-4, "learning rate of fine-tuning", above=0)
    fine_tune_backbone_rate: float = setting(
        1.0,
        "fine-tuning: the backbone's learning rate as a fraction of the head's "
        "(discriminative learning rates; 1: one rate for both)",
        above=0,
    )
    threshold_policy: str = setting(
        AUTO_THRESHOLD_POLICY,
        "the bundle's thresholds: one per genre, one global, per genre shrunk toward the "
        "global one, or auto: whichever cross-validates best on the validation posters",
        choices=THRESHOLD_POLICIES,
    )
    seed: int = setting(0, "seed of the initial weights, dropout and each epoch's order")
    max_failures: int = setting(2, "restarts of the workers after a failure", minimum=0)
    in_memory: bool | None = setting(
        None,
        "workers copy their shard into memory, or stream it from Ray's object store each "
        "epoch (default: copy it when it fits)",
    )


@dataclass(frozen=True)
class TuneSettings:
    """What a tuning experiment searches, and how it spends its time."""

    trials: int = setting(10, "trials to run", minimum=1)
    max_epochs: int = setting(10, "epochs per trial, at most", minimum=1)
    searcher: str = setting(
        "tpe",
        "tpe: Optuna's TPE; gp: Gaussian process (needs the bayesopt extra)",
        choices=SEARCHERS,
    )
    objective: str = setting("val_pr_auc", "what the search maximises", choices=tuple(MONITORS))
    time_budget: float | None = setting(None, "seconds; then the best trial so far wins", above=0)
    concurrency: int = setting(1, "trials at once", minimum=1)
    workers_per_trial: int = setting(1, "Ray Train workers per trial", minimum=1)
    grace_period: int = setting(1, "epochs every trial trains before ASHA may stop it", minimum=1)
    reduction_factor: int = setting(
        2, "ASHA keeps the best 1/reduction_factor at each rung", minimum=2
    )
    searcher_seed: int = setting(0, "seed of the searcher's proposals")
    start_points: list[dict] = setting(
        help="points tried first, as a JSON list of objects (default: the untuned model)",
        factory=list,
    )
    feature_choices: dict = setting(
        help="pretrained models: what features the head trains on, searched too, as a JSON "
        'object of lists: {"views": [1, 2, 4], "pooling": ["avg", "gem"]}; each '
        "combination's features are cached before the first trial",
        factory=dict,
    )


@dataclass(frozen=True)
class InferSettings:
    """How bulk inference runs: model actors, their hardware, batches and output."""

    workers: int | None = setting(
        None, "model actors (default: 1, growing to one per node or GPU)", minimum=1
    )
    gpu: bool = setting(False, "one GPU per model actor")
    batch_size: int = setting(64, "posters per model call", minimum=1)
    precision: str = setting(AUTO_PRECISION, PRECISION_HELP, choices=PRECISIONS)
    cpus_per_worker: float | None = setting(
        None, "CPUs each model actor reserves (default: planned from the nodes)", above=0
    )
    all_probabilities: bool = setting(False, "also write every genre's probability")
    views: int = setting(
        1,
        "views of each poster whose predictions are averaged (test-time augmentation, "
        "config.POSTER_VIEWS): K views cost K passes of the model",
        choices=VIEW_COUNTS,
    )
    num_cpus: int | None = num_cpus_setting()


@dataclass(frozen=True)
class ReportSettings:
    """How `poster-ray report` writes a bulk inference job's gallery."""

    page_size: int = setting(200, "posters per gallery page")
    num_cpus: int | None = num_cpus_setting()


@dataclass(frozen=True)
class TrackingSettings:
    """Experiment tracking: off unless a tracking URI is given (the `tracking` extra)."""

    mlflow_uri: str | None = setting(
        None, "log params, metrics and the bundle to MLflow: sqlite:///mlflow.db, http://host:5000"
    )
    mlflow_experiment: str = setting("poster-ray", "the MLflow experiment of these runs")


@dataclass(frozen=True)
class PipelineSettings:
    """Everything one end-to-end run needs: each stage's own settings."""

    prepare: PrepareSettings = field(default_factory=PrepareSettings)
    cnn: TrainConfig = field(default_factory=TrainConfig)  # the report's CNN
    pretrained: TrainConfig = field(default_factory=lambda: TrainConfig(model="efficientnet_lite0"))
    tune: TuneSettings = field(default_factory=TuneSettings)  # searches the pretrained head
    infer: InferSettings = field(default_factory=InferSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
