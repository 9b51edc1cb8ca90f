"""Feature caching: a frozen backbone's features of every poster, computed once.

A frozen backbone gives every poster the same features in every epoch, so computing
them once (Ray Data: decoded posters in, a pool of backbone actors, batched) turns
training the head into seconds per epoch, and lets every tuning trial share them. The
bundle still joins backbone and head into one model that takes uint8 posters, so
inference is unchanged. More views of each training poster (models.views) are cached
beside them, one folder per view, for a head that trains on augmented posters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import ray
from ray.actor import ActorHandle

from poster_ray import resources
from poster_ray.config import POOLINGS, POSTER_VIEWS, SPLITS
from poster_ray.data.cache import BLOCK_ROWS, ensure_decoded, read_cached_arrays, unpack_arrays
from poster_ray.data.context import all_cpus_to_one_operator
from poster_ray.data.tables import read_table, write_table
from poster_ray.layout import RunDir
from poster_ray.progress import counted_progress
from poster_ray.resources import TASK_CPUS
from poster_ray.storage import Location

FEATURES_MARKER = "_features.json"  # written last: the cache is complete
FEATURES_DTYPE = "float32"


@dataclass(frozen=True)
class FeatureCache:
    """Where a backbone's features are, and their length; with `more_views`, the caches
    of more views of the training posters, whose rows the training split adds."""

    location: Location
    dims: int
    more_views: tuple[Location, ...] = ()

    def split_parts(self, split: str) -> list[Location]:
        parts = [self.location, *(self.more_views if split == "train" else ())]
        return [part / f"split={split}" for part in parts]

    def split(
        self, split: str, task_cpus: float = TASK_CPUS, block_rows: int = BLOCK_ROWS
    ) -> ray.data.Dataset:
        """One split's `features` and `labels`, read by tasks of `task_cpus` each into
        blocks of about `block_rows` rows."""
        return read_cached_arrays(
            self.split_parts(split), "features", FEATURES_DTYPE, (self.dims,), task_cpus, block_rows
        )

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(features, labels) of one split as numpy arrays, for single-process use."""
        frame = pd.concat(
            read_table(part, ["features", "labels"]) for part in self.split_parts(split)
        )
        features = unpack_arrays(frame["features"].to_numpy(), FEATURES_DTYPE, (self.dims,))
        return features, np.stack(frame["labels"].to_numpy())


class FeatureExtractor:
    """A Ray actor holding the backbone: decoded posters in, pooled features out."""

    def __init__(
        self,
        backbone: str,
        image_size: int,
        weights: str,
        pooling: str,
        view: int,
        threads: int,
        counter: ActorHandle,
    ) -> None:
        from poster_ray.models import inference_function
        from poster_ray.models.transfer import build_backbone
        from poster_ray.models.views import on_view

        resources.configure_tensorflow_threads(threads)
        resources.prepare_tensorflow_gpus()
        model = on_view(build_backbone(backbone, image_size, weights, pooling=pooling), view)
        self.shape = model.input_shape[1:]
        self.predict = inference_function(model)
        self.counter = counter  # a progress.RowCounter

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = unpack_arrays(batch.pop("image"), "uint8", self.shape)
        features = self.predict(images).astype(FEATURES_DTYPE)
        batch["features"] = np.array([row.tobytes() for row in features], dtype=object)
        self.counter.add.remote(len(features), 0)
        return batch


def ensure_features(
    run: RunDir,
    backbone: str,
    image_size: int,
    weights: str = "imagenet",
    pooling: str = POOLINGS[0],
    view: int = 0,
) -> FeatureCache:
    """The run's features from `backbone` at `image_size`, pooled as `pooling` says,
    computing them if missing: of every poster, or for a `view` past the first, of that
    view of each training poster.

    Features are float32, whatever the hardware: the cache is shared by every trial and
    must not depend on which node computed it.
    """
    location = run.features(backbone, image_size, pooling, view)
    wanted = dict(
        backbone=backbone, image_size=image_size, weights=weights, pooling=pooling, view=view
    )
    if cache := finished_cache(location, wanted):
        return cache
    ensure_decoded(run, image_size)
    plan = resources.plan_workers(
        resources.alive_nodes(), "feature extraction", leave_for_tasks=1.0
    )
    location.remove()
    of_what = f"view {view} ({POSTER_VIEWS[view].name}) of the training posters" if view else ""
    print(
        f"Computing {backbone} features at {image_size}x{image_size}, {pooling} pooling"
        f"{', ' + of_what if of_what else ''} "
        f"({plan.workers} actor(s) x {plan.cpus_per_worker:g} CPUs) ...",
        flush=True,
    )
    # Read before the actors start: Ray Data lists the files in a task of 1 CPU (not
    # settable), which waited forever on 1-CPU nodes beside actors of 0.4. Write tasks
    # ask only for what the actors leave on a node.
    decoded = ray.data.read_parquet(
        run.cache(image_size).uri, columns=["id", "image", "labels", "error", "split"]
    )
    if view:
        from ray.data.expressions import col

        decoded = decoded.filter(expr=col("split") == "train")
    decoded = decoded.materialize()
    with all_cpus_to_one_operator(), counted_progress(decoded.count()) as counter:
        decoded.map_batches(
            FeatureExtractor,
            fn_constructor_kwargs={
                "backbone": backbone,
                "image_size": image_size,
                "weights": weights,
                "pooling": pooling,
                "view": view,
                "threads": plan.threads,
                "counter": counter,
            },
            compute=ray.data.ActorPoolStrategy(size=plan.workers),
            num_cpus=plan.cpus_per_worker,
            batch_size=32,
        ).write_parquet(
            location.uri,
            partition_cols=["split"],
            compression="none",
            ray_remote_args={"num_cpus": plan.task_cpus},
        )
    dims = len(read_table(location, ["features"])["features"].iloc[0]) // 4
    (location / FEATURES_MARKER).write_json({**wanted, "dims": dims})
    return FeatureCache(location, dims)


def ensure_joined_features(
    run: RunDir,
    backbones: list[str],
    image_size: int,
    weights: str = "imagenet",
    pooling: str = POOLINGS[0],
    view: int = 0,
) -> FeatureCache:
    """Every backbone's features (`ensure_features`, of `view`), side by side in one
    cache, in the order of `backbones`: what a head on several backbones trains on
    (models.transfer concatenates their outputs in the same order). One backbone's is
    its own cache.

    Joined in the driver: a row is a poster's few thousand floats, a split a few
    thousand rows, matched by poster id, each cache read once."""
    caches = [ensure_features(run, name, image_size, weights, pooling, view) for name in backbones]
    if len(caches) == 1:
        return caches[0]
    location = run.features("+".join(backbones), image_size, pooling, view)
    wanted = dict(
        backbones=backbones, image_size=image_size, weights=weights, pooling=pooling, view=view
    )
    if cache := finished_cache(location, wanted):
        return cache
    location.remove()
    for split in SPLITS if view == 0 else ("train",):
        write_table(joined_split(caches, split), location / f"split={split}" / "part.parquet")
    dims = sum(cache.dims for cache in caches)
    (location / FEATURES_MARKER).write_json({**wanted, "dims": dims})
    return FeatureCache(location, dims)


def joined_split(caches: list[FeatureCache], split: str) -> pd.DataFrame:
    """One split of `caches`: the first's rows, each with every cache's features of the
    same poster appended (float32 bytes, so appending bytes appends the vectors)."""
    columns = ["id", "labels", "error", "features"]
    frames = [read_table(cache.location / f"split={split}", columns) for cache in caches]
    joined = frames[0]
    for frame in frames[1:]:
        more = frame[["id", "features"]].rename(columns={"features": "more"})
        joined = joined.merge(more, on="id", validate="one_to_one")
        joined["features"] = joined["features"] + joined.pop("more")
    return joined


def finished_cache(location: Location, wanted: dict) -> FeatureCache | None:
    """The cache at `location` when its marker (written last) says it was made as
    `wanted` says; caches made before pooling and views were choices were average-pooled
    features of the posters themselves."""
    marker = location / FEATURES_MARKER
    if not marker.is_file():
        return None
    made = {"pooling": POOLINGS[0], "view": 0, **marker.read_json()}
    if any(made.get(key) != value for key, value in wanted.items()):
        return None
    return FeatureCache(location, made["dims"])
