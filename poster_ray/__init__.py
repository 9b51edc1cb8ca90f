"""poster-ray: multi-label movie-poster genre classification on Ray."""

import logging
import os

# What every poster_ray process needs in its environment: the driver's (set here, before
# TensorFlow or Ray is imported) and every Ray worker's (`runtime.init_ray` passes it on
# as the job's runtime_env; the README's `ray job submit` command does too).
PROCESS_ENV = {
    # Ray Train runs Keras under MultiWorkerMirroredStrategy, which only tf-keras (Keras
    # 2) supports; TensorFlow reads this once, at its first import.
    "TF_USE_LEGACY_KERAS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "3",  # not even "failed call to cuInit" on CPU machines
    # Ray Data's per-dataset INFO lines (plans, "execution finished") from every worker;
    # its progress bars are not logging and stay.
    "RAY_DATA_LOG_LEVEL": "WARNING",
    # Deprecation notices from inside Ray and TensorFlow, which users cannot act on.
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
    # Ray Train re-routes workers' print() through its logger, which printed each of
    # our epoch lines twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # Tune's new output engine prints its tables even when asked to be silent.
    "RAY_AIR_NEW_OUTPUT": "0",
}
for _key, _value in PROCESS_ENV.items():
    os.environ.setdefault(_key, _value)

from poster_ray.quiet_tensorflow import install_quiet_import  # noqa: E402

install_quiet_import()
# Ray Data's note, in every process that reads a dataset, that its progress bars are off
# where we turned them off (training workers, bulk inference, which shows its own line).
logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)

__version__ = "0.1.0"
