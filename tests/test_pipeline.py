"""The pipeline's settings; the whole pipeline runs end to end in test_multinode.py, as the
job `ray job submit` sends to a 2-node cluster with S3 storage."""

from __future__ import annotations

from dataclasses import replace

import pytest

from poster_ray.errors import PosterRayError
from poster_ray.infer import job
from poster_ray.layout import RunDir
from poster_ray.pipeline import PROFILES, drop_stale_predictions, infer_manifest, profile_settings
from poster_ray.storage import Location


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


def test_bulk_inference_runs_in_the_precision_and_on_the_hardware_asked_for(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(job, "run_inference", lambda *args, **kwargs: calls.append(kwargs))
    monkeypatch.setattr(job, "format_inference_summary", lambda summary: "")
    settings = profile_settings("quick", str(tmp_path))
    settings = replace(settings, pretrained=replace(settings.pretrained, precision="float32"))
    infer_manifest(RunDir(tmp_path), Location.of(tmp_path / "bundle"), settings)
    assert calls == [{"gpu": False, "batch_size": 64, "precision": "float32"}]


def test_predictions_of_a_model_the_run_no_longer_holds_are_redone(tmp_path):
    bundle, output = tmp_path / "bundle", tmp_path / "predictions"
    bundle.mkdir()
    output.mkdir()
    (bundle / "bundle.json").write_text('{"content_hash": "new"}')
    (output / "_job.json").write_text('{"bundle_hash": "new"}')
    drop_stale_predictions(Location.of(output), Location.of(bundle))
    assert output.is_dir()  # made by this bundle: kept, and inference resumes it
    (output / "_job.json").write_text('{"bundle_hash": "old"}')
    drop_stale_predictions(Location.of(output), Location.of(bundle))
    assert not output.exists()
