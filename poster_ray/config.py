"""Constants and the preprocessing spec: one source of truth for every stage."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

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
MODEL_NAMES = ("custom_cnn", "efficientnet_lite0", "efficientnet_lite2", "vgg16", "resnet50")

SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}
SPLITS = tuple(SPLIT_FRACTIONS)


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
        return cls(**location.read_json())


# Validation metrics that can pick the best epoch or trial, with their direction. None of
# them rewards predicting nothing: val_pr_auc is Keras' micro-averaged precision-recall
# AUC (close to micro average precision), val_micro_f1 is micro-F1 at 0.5.
MONITORS = {"val_loss": "min", "val_pr_auc": "max", "val_micro_f1": "max"}


def pick_best(monitor: str):
    """`min` or `max`: the builtin that picks the best value of `monitor`."""
    return min if MONITORS[monitor] == "min" else max


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved with its model."""

    model: str = "custom_cnn"
    epochs: int = 10
    batch_size: int = 32  # global: split evenly across the workers
    learning_rate: float = 1e-3
    workers: int | None = None  # None: one per node with CPUs (one per GPU with `gpu`)
    gpu: bool = False
    cpus_per_worker: float | None = None  # None: a share of the node (resources.py)
    precision: str = "auto"  # auto, float32, bfloat16 or float16: resources.PRECISIONS
    early_stopping: int = 3  # patience in epochs on `monitor`; 0 turns it off
    monitor: str = "val_loss"  # picks the best epoch: one of MONITORS
    loss: str = "bce"  # one of LOSSES
    hparams: dict = field(default_factory=dict)
    # Transfer models: backbone weights (imagenet, none or a file), input size (default:
    # the backbone's native resolution), and optional fine-tuning after the head.
    weights: str = "imagenet"
    input_size: int | None = None
    fine_tune_blocks: int = 0  # the backbone's top blocks to unfreeze; 0: frozen backbone
    fine_tune_epochs: int = 3
    fine_tune_learning_rate: float = 1e-4
    max_failures: int = 2
    # Workers copy their shard into memory (True), stream it from Ray's object store each
    # epoch (False), or copy it when it fits (None: train_worker.reads_from_memory).
    in_memory: bool | None = None


# Multi-label losses (models.losses): plain, positive-weighted per genre, focal, asymmetric.
LOSSES = ("bce", "weighted_bce", "focal", "asymmetric")

SEARCHERS = ("tpe", "gp")  # Optuna's TPE; Gaussian-process BayesOptSearch


@dataclass
class TuneSettings:
    """What a tuning experiment searches, and how it spends its time."""

    trials: int = 10
    max_epochs: int = 10
    searcher: str = "tpe"  # tpe: Optuna's TPE; gp: Gaussian-process BayesOptSearch
    objective: str = "val_pr_auc"  # one of config.MONITORS
    time_budget_s: float | None = None
    concurrency: int = 1  # trials at once
    grace_period: int = 1  # epochs every trial trains before ASHA may stop it
    reduction_factor: int = 2  # ASHA keeps the best 1/reduction_factor at each rung
    seed: int = 0
    # Configurations tried first, before the searcher's own; default: the untuned model.
    start_points: list[dict] = field(default_factory=list)
