"""poster-ray: multi-label movie-poster genre classification on Ray.

Importing the package changes nothing in the process: no environment variable, import
hook or logger. Process set-up happens where Ray starts (`runtime.init_ray`), and where
TensorFlow is first imported (`tf_import`).
"""

__version__ = "0.1.0"
