"""TensorFlow and tf-keras: everything in poster_ray imports them from here.

The first import sets TensorFlow's environment (tf-keras, C++ log level) unless the
user set it, and loads TensorFlow with its start-up noise dropped (see
quiet_tensorflow): this module is where a process first meets TensorFlow, not
`import poster_ray`.
"""

from __future__ import annotations

import os
import sys

from poster_ray.quiet_tensorflow import (
    TENSORFLOW_ENV,
    quiet_tensorflow_logger,
    start_up_noise_dropped,
)

if "tensorflow" not in sys.modules:  # TensorFlow reads these once, at its first import
    for _key, _value in TENSORFLOW_ENV.items():
        os.environ.setdefault(_key, _value)

with start_up_noise_dropped():
    import tensorflow as tf
quiet_tensorflow_logger(tf)

import tf_keras as keras  # noqa: E402

__all__ = ["keras", "tf"]
