"""TensorFlow and tf-keras: everything in poster_ray imports them from here.

`poster_ray/__init__` has already made the import quiet (see quiet_tensorflow).
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

__all__ = ["keras", "tf"]
