"""Tuning's feature choices: what may be searched, and the combinations it caches; what a
trial trains, and what its process imports."""

import subprocess
import sys

import pytest

from poster_ray.config import TrainConfig, TuneSettings
from poster_ray.errors import PosterRayError
from poster_ray.hparams import Choice
from poster_ray.tune.experiment import trial_base
from poster_ray.tune.space import (
    feature_choices,
    feature_combinations,
    features_key,
    with_features,
)

LITE = TrainConfig(model="efficientnet_lite0", views=2)


def choices_of(**feature_choices_):
    return feature_choices(LITE, TuneSettings(feature_choices=feature_choices_))


def test_each_searched_feature_is_a_choice_and_every_combination_is_listed():
    choices = choices_of(views=[1, 2, 2], pooling=["avg", "gem"])
    assert choices == {"views": Choice((1, 2)), "pooling": Choice(("avg", "gem"))}
    assert feature_combinations(choices) == [
        {"views": 1, "pooling": "avg"},
        {"views": 1, "pooling": "gem"},
        {"views": 2, "pooling": "avg"},
        {"views": 2, "pooling": "gem"},
    ]
    assert feature_combinations({}) == [{}]  # nothing searched: the base's one


def test_a_start_point_takes_the_base_features_unless_it_says():
    choices = choices_of(views=[1, 2])
    assert with_features({"units": 0}, LITE, choices) == {"views": 2, "units": 0}
    assert with_features({"views": 1}, LITE, choices) == {"views": 1}
    assert features_key(LITE) == (2, "avg")


@pytest.mark.parametrize(
    ("model", "choices", "message"),
    [
        ("custom_cnn", {"views": [1]}, "needs a pretrained model, not custom_cnn"),
        ("efficientnet_lite0", {"loss": ["bce"]}, "'loss' is not searchable"),
        ("efficientnet_lite0", {"views": [2, 99]}, "views must be a list of values among"),
        ("efficientnet_lite0", {"pooling": "gem"}, "pooling must be a list"),
        ("efficientnet_lite0", {"views": [1, 4]}, r"views must include --views \(2\)"),
    ],
)
def test_bad_feature_choices_are_one_line(model, choices, message):
    base = TrainConfig(model=model, views=2 if model != "custom_cnn" else 1)
    with pytest.raises(PosterRayError, match=message):
        feature_choices(base, TuneSettings(feature_choices=choices))


def test_trials_tune_a_head_and_never_fine_tune_its_backbone():
    base = trial_base(TrainConfig(model="efficientnet_lite0", fine_tune_blocks=17), TuneSettings())
    assert base.fine_tune_blocks == 0


def test_a_trial_process_imports_no_tensorflow():
    """Tune starts a process per trial that only starts a Ray Train run: importing its
    function (and the data and space it receives) must not cost TensorFlow's import."""
    script = (
        "import sys; import poster_ray.tune.trial, poster_ray.trainer, poster_ray.hparams; "
        "print(sorted(m for m in ('tensorflow', 'tf_keras', 'keras') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]", loaded.stderr[-2000:]
