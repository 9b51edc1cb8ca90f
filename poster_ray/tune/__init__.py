"""Tuning stage: a Bayesian search over a model's hyperparameters with Ray Tune.

experiment.py runs it (settings checks, the searcher, ASHA), trial.py is one trial (a
Ray Train run reporting to Tune), space.py turns a model's search space into each
searcher's, callbacks.py prints the trials and frees their workers, results.py exports
the best trial with the trials table.

Nothing is imported here: a trial's process imports trial.py alone, without the driver's
TensorFlow-bound modules.
"""
