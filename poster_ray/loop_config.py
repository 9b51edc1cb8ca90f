"""What a Ray Train worker of one run receives, importable without TensorFlow.

Ray Train's controller unpickles the run's train_loop_config: a module that imported
TensorFlow here would load it (seconds of CPU, half a gigabyte) into a process that
never trains.
"""

from __future__ import annotations

from dataclasses import dataclass

from poster_ray.config import MONITORS, TrainConfig

LOOP_CONFIG_KEY = "loop"  # Ray Train passes train_loop_config as a dict: its one entry


@dataclass(frozen=True)
class ModelInputs:
    """What the trained model takes in: decoded posters, or a backbone's cached features."""

    column: str  # the dataset column workers feed the model: "image" or "features"
    shape: tuple[int, ...]
    num_genres: int


@dataclass(frozen=True)
class Steps:
    """One split's per-worker batch and steps per epoch (Keras needs them fixed)."""

    batch: int
    steps: int


@dataclass(frozen=True)
class TrainLoopConfig:
    """Everything a Train worker of one run reads: the run's settings, and what the
    driver derived from its data."""

    settings: TrainConfig
    inputs: ModelInputs
    loss_weights: list[float]  # positive weight per genre, from the training split
    train_steps: Steps
    val_steps: Steps
    dataset_bytes: dict[str, int]  # by dataset name (worker_dataset_name)
    head_weights: list | None = None  # fine-tuning starts from the trained head

    @property
    def monitor_mode(self) -> str:
        return MONITORS[self.settings.monitor]


def worker_dataset_name(split: str, rank: int) -> str:
    """The name under which Ray Train hands worker `rank` its share of `split`."""
    return f"{split}_{rank}"
