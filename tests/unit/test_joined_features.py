"""Several backbones' feature caches joined into one: rows matched by poster id."""

import numpy as np
import pandas as pd

from poster_ray.data.tables import write_table
from poster_ray.features import FeatureCache, joined_split
from poster_ray.storage import Location

IDS = ["tt1", "tt2", "tt3"]


def cache(root, dims: int, order: list[int], offset: float) -> FeatureCache:
    """A cache whose poster i's features are offset + i, repeated `dims` times, its rows
    written in `order`."""
    rows = [
        {
            "id": IDS[i],
            "labels": [i % 2],
            "error": "",
            "features": np.full(dims, offset + i, "float32").tobytes(),
        }
        for i in order
    ]
    location = Location.of(str(root))
    write_table(pd.DataFrame(rows), location / "split=val" / "part.parquet")
    return FeatureCache(location, dims)


def test_each_poster_gets_every_backbones_features_whatever_their_row_order(tmp_path):
    first = cache(tmp_path / "a", 2, [0, 1, 2], offset=0.0)
    second = cache(tmp_path / "b", 3, [2, 0, 1], offset=10.0)
    joined = joined_split([first, second], "val")
    assert list(joined["id"]) == IDS  # the first cache's rows, in its order
    features = np.stack([np.frombuffer(blob, "float32") for blob in joined["features"]])
    expected = [[i, i, 10 + i, 10 + i, 10 + i] for i in range(3)]
    np.testing.assert_array_equal(features, expected)
    assert [list(labels) for labels in joined["labels"]] == [[0], [1], [0]]
