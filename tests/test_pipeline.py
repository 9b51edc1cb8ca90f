"""The pipeline's settings; the whole pipeline runs end to end in test_multinode.py, as the
job `ray job submit` sends to a 2-node cluster with S3 storage."""

from __future__ import annotations

import pytest

from poster_ray.errors import PosterRayError
from poster_ray.pipeline import PROFILES, profile_settings


def test_profiles_fill_what_the_command_line_leaves_out(tmp_path):
    quick = profile_settings("quick", str(tmp_path), limit=None, image_size=64)
    assert quick.limit == 1500 and quick.image_size == 64
    assert quick.cnn.epochs == 4 and quick.cnn.workers is None
    assert quick.cnn.precision == quick.pretrained.precision == "auto"
    assert quick.pretrained.model == "efficientnet_lite0"


def test_every_profile_trains_the_cnn_and_a_pretrained_model():
    for profile in PROFILES.values():
        assert profile["cnn"].model == "custom_cnn"
        assert profile["pretrained"].model.startswith("efficientnet_lite")


def test_an_unknown_profile_is_refused(tmp_path):
    with pytest.raises(PosterRayError, match="unknown profile 'huge'"):
        profile_settings("huge", str(tmp_path))
