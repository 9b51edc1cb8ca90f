"""The decode stage's function, alone in a light module: each decode worker imports it
(and only what it needs: PIL, numpy, the storage layer), not the driver's pipeline."""

from __future__ import annotations

import numpy as np

from poster_ray.config import PreprocessSpec
from poster_ray.images import decode_files


def decode_batch(batch: dict[str, np.ndarray], spec: PreprocessSpec) -> dict[str, np.ndarray]:
    """path, chunk -> + image (uint8, spec.shape; zeros on failure), error ("" when ok)."""
    batch["image"], batch["error"] = decode_files(batch["path"], spec)
    return batch
