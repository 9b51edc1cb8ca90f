"""Where every file of a run lives: `RunDir` and `ModelDir` name each one, once.

A run directory (a local path or a URI)::

    manifest.parquet, genres.json, preprocess.json, prepare_summary.json, dropped.csv
    cache/SIZEpx/split=*/           decoded uint8 posters (prepare, and on demand)
    features/BACKBONE-SIZEpx/       a frozen backbone's pooled features
    ray/NAME/                       Ray Train and Tune runs: checkpoints, trial results
    models/NAME/                    one ModelDir per trained model
    comparison.md                   the pipeline's model comparison
    report/index.html               the run's HTML report (poster_ray.report)
    predictions/                    the pipeline's bulk inference Parquet parts
        gallery/                    their HTML gallery (GalleryDir)

A model directory: model.keras, history.json, train_config.json, curve_METRIC.png and
bundle/ (the export step), metrics.json, report.md and test_predictions.parquet
(evaluate), and for a tuned model
trials.csv, trials.md, trials.png and tuning.json. The bundle's own files are named in
`poster_ray.bundle`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from poster_ray.config import POOLINGS, PreprocessSpec, checked_genres
from poster_ray.storage import Location

# The model and its per-epoch history, named alike in a model directory, in every Ray
# Train checkpoint (train_worker) and, for the model, in a bundle.
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.json"
# The table of every evaluated model: in the run (pipeline), or wherever `compare` writes.
COMPARISON_FILE = "comparison.md"
# The HTML page of a report or a gallery, opened from disk.
PAGE_FILE = "index.html"


@dataclass(frozen=True, init=False)
class Folder:
    """A folder of a run's layout: a local path or a URI, given as either."""

    root: Location

    def __init__(self, root: str | os.PathLike | Location) -> None:
        object.__setattr__(self, "root", Location.of(root))


@dataclass(frozen=True, init=False)
class ModelDir(Folder):
    """The layout of one model's directory, shared by export, evaluate, tune and bench."""

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def model(self) -> Location:
        """The float32 model on uint8 posters, as exported."""
        return self.root / MODEL_FILE

    @property
    def history(self) -> Location:
        return self.root / HISTORY_FILE

    @property
    def train_config(self) -> Location:
        return self.root / "train_config.json"

    @property
    def bundle(self) -> Location:
        """What inference loads (poster_ray.bundle), written by the export step."""
        return self.root / "bundle"

    @property
    def metrics(self) -> Location:
        """The test-split scores beside the baselines, written by evaluate."""
        return self.root / "metrics.json"

    @property
    def report(self) -> Location:
        return self.root / "report.md"

    @property
    def test_predictions(self) -> Location:
        """Each test poster's id and probabilities (evaluate): the run report's hardest
        and easiest posters."""
        return self.root / "test_predictions.parquet"

    def curve(self, metric: str) -> Location:
        """The train-vs-validation plot of one history metric."""
        return self.root / f"curve_{metric}.png"

    def curves(self) -> list[Location]:
        """The curve plots present, sorted by name."""
        return self.root.glob(self.curve("*").name)

    @property
    def trials_csv(self) -> Location:
        """A tuned model's trials, one row each (also as trials_table, in Markdown)."""
        return self.root / "trials.csv"

    @property
    def trials_table(self) -> Location:
        return self.root / "trials.md"

    @property
    def trials_plot(self) -> Location:
        return self.root / "trials.png"

    @property
    def tuning(self) -> Location:
        """A tuned model's search summary."""
        return self.root / "tuning.json"


@dataclass(frozen=True, init=False)
class RunDir(Folder):
    """The layout of a run directory (a local path or a URI), shared by every stage."""

    @property
    def manifest(self) -> Location:
        return self.root / "manifest.parquet"

    @property
    def genres(self) -> Location:
        return self.root / "genres.json"

    @property
    def preprocess(self) -> Location:
        return self.root / "preprocess.json"

    @property
    def summary(self) -> Location:
        return self.root / "prepare_summary.json"

    @property
    def dropped(self) -> Location:
        return self.root / "dropped.csv"

    @property
    def staging(self) -> Location:
        """Where prepare builds a new version of the run, swapped in once complete."""
        return self.root / ".prepare.new"

    @property
    def replaced(self) -> Location:
        """Where prepare moves the old version while it swaps the new one in."""
        return self.root / ".prepare.old"

    @property
    def ray_storage(self) -> Location:
        """Ray Train and Tune runs (checkpoints, results), on the run's own storage."""
        return self.root / "ray"

    @property
    def caches(self) -> Location:
        """Every decoded cache of the run, one per image size."""
        return self.root / "cache"

    def cache(self, image_size: int) -> Location:
        """Decoded uint8 posters at one size, Parquet partitioned by split: decoded once,
        read often. prepare writes the run's own size; other sizes (a pretrained model's
        native resolution) are decoded when first needed."""
        return self.caches / f"{image_size}px"

    def cache_split(self, split: str, image_size: int) -> Location:
        return self.cache(image_size) / f"split={split}"

    @property
    def feature_caches(self) -> Location:
        """Every backbone's cached features of the run."""
        return self.root / "features"

    def features(
        self, backbone: str, image_size: int, pooling: str = POOLINGS[0], view: int = 0
    ) -> Location:
        """A frozen backbone's pooled features of every poster, partitioned by split, or
        of view `view` of each training poster (config.POSTER_VIEWS). The first pooling
        and view 0 add no suffix: the folder is every earlier run's."""
        suffix = "" if pooling == POOLINGS[0] else f"-{pooling.replace('+', '-')}"
        suffix += f"-view{view}" if view else ""
        return self.feature_caches / f"{backbone}-{image_size}px{suffix}"

    @property
    def models(self) -> Location:
        """The folder of every model directory."""
        return self.root / "models"

    def model(self, name: str) -> ModelDir:
        return ModelDir(self.models / name)

    def model_dirs(self) -> list[ModelDir]:
        """Every model directory of the run, sorted by name."""
        return [ModelDir(path) for path in self.models.iterdir()]

    @property
    def comparison(self) -> Location:
        """The pipeline's table of every evaluated model beside the baselines."""
        return self.root / COMPARISON_FILE

    @property
    def report(self) -> Location:
        """The run's HTML report: one self-contained page."""
        return self.root / "report" / PAGE_FILE

    @property
    def predictions(self) -> Location:
        """The pipeline's bulk inference over every prepared poster (Parquet parts)."""
        return self.root / "predictions"

    def load_genres(self) -> list[str]:
        return checked_genres(self.genres.read_json(), self.genres)

    def load_spec(self) -> PreprocessSpec:
        return PreprocessSpec.load(self.preprocess)


@dataclass(frozen=True, init=False)
class GalleryDir(Folder):
    """The gallery of a bulk inference output folder, inside it: the page, one thumbnail
    per poster, and each view's pages of rows as scripts (file:// pages may load scripts,
    not fetch JSON)."""

    def __init__(self, predictions: str | os.PathLike | Location) -> None:
        super().__init__(Location.of(predictions) / "gallery")

    @property
    def page(self) -> Location:
        return self.root / PAGE_FILE

    @property
    def thumbs(self) -> Location:
        return self.root / "thumbs"

    def thumb(self, key: str) -> str:
        """A thumbnail's path relative to the page: sharded by its key's first two
        characters, so no folder holds more than a few thousand files."""
        return f"thumbs/{key[:2]}/{key}.jpg"

    def view_page(self, view: str, number: int) -> str:
        """One page of a view's rows, relative to the page."""
        return f"pages/{view}/{number:06d}.js"

    @property
    def record(self) -> Location:
        """What the gallery was made from (the part files), so a rerun adds only the new."""
        return self.root / "_gallery.json"
