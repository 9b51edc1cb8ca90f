"""poster-ray: multi-label movie-poster genre classification on Ray."""

import os

# Ray Train runs Keras under MultiWorkerMirroredStrategy, which only tf-keras (Keras 2)
# supports. TensorFlow reads this variable once, at its first import, so it is set here,
# before any poster_ray module can import TensorFlow, in the driver and every worker alike.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
