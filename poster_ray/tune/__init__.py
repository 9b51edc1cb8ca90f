"""Tuning stage: a Bayesian search over a model's hyperparameters with Ray Tune.

experiment.py runs it (settings checks, the searcher, ASHA, the trials), space.py turns
a model's search space into each searcher's, callbacks.py prints the trials and frees
their workers, results.py exports the best trial with the trials table.
"""

from poster_ray.tune.experiment import tune_model
from poster_ray.tune.results import format_tuning_summary, is_tuned

__all__ = ["format_tuning_summary", "is_tuned", "tune_model"]
