"""Constants and the preprocessing spec: one source of truth for every stage."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

DATASET_URL = "https://github.com/laxmimerit/Movies-Poster_Dataset"
DEFAULT_DATA_DIR = Path("data/Movies-Poster_Dataset")
DATA_ENV_VAR = "POSTER_DATA"

ID_COLUMN = "Id"
# Columns of train.csv that are not genres: the Genre list-string repeats the one-hot
# columns, and N/A flags posters without a genre (those rows are excluded).
NON_GENRE_COLUMNS = ("Id", "Genre", "N/A")
NA_COLUMN = "N/A"

MODEL_NAMES = ("custom_cnn", "vgg16")

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

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> PreprocessSpec:
        return cls(**json.loads(path.read_text()))


@dataclass(frozen=True)
class RunDir:
    """The layout of a run directory, shared by every stage that reads or writes it."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.parquet"

    @property
    def genres(self) -> Path:
        return self.root / "genres.json"

    @property
    def preprocess(self) -> Path:
        return self.root / "preprocess.json"

    @property
    def summary(self) -> Path:
        return self.root / "prepare_summary.json"

    @property
    def dropped(self) -> Path:
        return self.root / "dropped.csv"

    @property
    def cache(self) -> Path:
        """Decoded uint8 posters as Parquet, partitioned by split: decoded once, read often."""
        return self.root / "cache"

    def cache_split(self, split: str) -> Path:
        return self.cache / f"split={split}"

    def load_genres(self) -> list[str]:
        return json.loads(self.genres.read_text())


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
    weights: str = "none"  # vgg16 only: none, imagenet or a .h5 path
    hparams: dict = field(default_factory=dict)
    max_failures: int = 2
    shuffle_buffer: int = 256


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
