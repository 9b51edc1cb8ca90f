"""One tuning trial: a Ray Train run of the point Tune proposes, reporting every epoch.

Tune runs this in a process of its own per trial, which only starts the Train run and
waits on it: everything imported here is TensorFlow-free (a unit test holds it so), and
TensorFlow loads in the run's workers alone.
"""

from __future__ import annotations

from ray.tune import get_context

from poster_ray.config import TrainConfig
from poster_ray.storage import Location
from poster_ray.trainer import TrainingData, make_trainer
from poster_ray.tune.space import decode_point, features_key, point_config


def run_trial(
    point: dict,
    *,
    data: dict[tuple, TrainingData],
    space: dict,
    base: TrainConfig,
    searcher: str,
    storage: str,
):
    """One trial: a Ray Train run of the decoded point, reporting each epoch to Tune.

    Named after the trial, so a resumed experiment resumes the run from its checkpoint.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    config = point_config(base, decode_point(space, point, searcher))
    trial_id = get_context().get_trial_id()
    trainer = make_trainer(
        data[features_key(config)], config, trial_id, Location(storage), [TuneReportCallback()]
    )
    trainer.fit()
