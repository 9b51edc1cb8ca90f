"""The pipeline's settings: profiles, and what its command line changes in them. The
whole pipeline runs end to end in test_multinode.py, as the job `ray job submit` sends
to a 2-node cluster with S3 storage."""

from __future__ import annotations

import pytest

from poster_ray.cli import build_parser, pipeline_settings
from poster_ray.config import InferSettings, PrepareSettings, TrainConfig
from poster_ray.errors import PosterRayError
from poster_ray.pipeline import (
    PROFILES,
    backbones_name,
    describe_pretrained,
    drop_stale_predictions,
    pretrained_name,
    profile_settings,
)
from poster_ray.storage import Location


def settings_of(*argv: str):
    return pipeline_settings(build_parser().parse_args(["pipeline", *argv]))


def test_the_profile_fills_what_the_command_line_leaves_out():
    settings = settings_of("--profile", "quick", "--image-size", "64", "--trials", "5")
    quick = PROFILES["quick"]
    assert settings.prepare.image_size == 64 and settings.tune.trials == 5
    assert settings.prepare.limit == quick.prepare.limit
    assert settings.tune.max_epochs == quick.tune.max_epochs
    assert settings.cnn == quick.cnn and settings.pretrained == quick.pretrained


def test_options_left_out_keep_the_stage_defaults():
    settings = settings_of("--profile", "full")
    assert settings.prepare.seed == PrepareSettings().seed
    assert settings.prepare.out == PrepareSettings().out
    assert settings.infer == InferSettings()


def test_hardware_options_reach_both_trainings_and_the_inference():
    settings = settings_of("--precision", "float32", "--gpu", "--workers", "2")
    for config in (settings.cnn, settings.pretrained):
        assert (config.precision, config.gpu, config.workers) == ("float32", True, 2)
    assert (settings.infer.precision, settings.infer.gpu) == ("float32", True)
    assert settings.infer.workers is None  # --workers is the training workers


def test_tracking_is_off_unless_asked_and_reaches_the_pipeline_when_it_is():
    assert settings_of().tracking.mlflow_uri is None
    uri = "sqlite:///mlflow.db"
    assert settings_of("--mlflow-uri", uri).tracking.mlflow_uri == uri


def test_the_split_seed_and_the_searcher_seed_stay_apart():
    settings = settings_of("--seed", "7", "--searcher-seed", "3")
    assert (settings.prepare.seed, settings.tune.searcher_seed) == (7, 3)


def test_pretrained_picks_the_pretrained_model_and_keeps_the_cnn():
    settings = settings_of("--profile", "tiny", "--pretrained", "vgg16")
    assert settings.pretrained.model == "vgg16"
    assert settings.pretrained.epochs == PROFILES["tiny"].pretrained.epochs
    assert settings.cnn.model == TrainConfig().model


def test_an_unknown_profile_is_refused():
    with pytest.raises(PosterRayError, match="unknown profile 'huge'"):
        profile_settings("huge")


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


def test_the_verdict_lines_give_the_difference_and_its_interval(tmp_path):
    from poster_ray.layout import RunDir
    from poster_ray.pipeline import PipelineResult, format_result

    result = PipelineResult(RunDir(tmp_path), best="lite0")
    for name, low, verdict in (
        ("cnn", -0.014, "cannot tell apart from"),
        ("lite0", 0.023, "beats"),
    ):
        result.headlines[name] = {
            "micro_f1@calibrated": 0.417,
            "baseline": "always Drama, Comedy",
            "baseline_micro_f1": 0.419,
            "versus_baseline": {
                "difference": low + 0.01,
                "low": low,
                "high": 0.012,
                "confidence": 0.95,
                "posters": 229,
                "verdict": verdict,
            },
        }
    lines = format_result(result).splitlines()
    assert lines[2] == (
        "cnn: micro-F1 0.417 cannot tell apart from 'always Drama, Comedy' (0.419): "
        "-0.004 [-0.014, +0.012], 95% interval over 229 test posters"
    )
    assert lines[3].startswith("lite0: micro-F1 0.417 beats 'always Drama, Comedy'")


def test_the_full_profile_fine_tunes_the_whole_lite0_backbone_and_quick_does_not():
    full = PROFILES["full"].pretrained
    assert (full.model, full.fine_tune_blocks, full.monitor) == (
        "efficientnet_lite0",
        17,
        "val_pr_auc",
    )
    assert PROFILES["quick"].pretrained.fine_tune_blocks == 0


def test_another_pretrained_model_leaves_the_profiles_backbones_and_fine_tuning_out():
    settings = settings_of("--profile", "full", "--pretrained", "vgg16")
    pretrained = settings.pretrained
    assert (pretrained.model, pretrained.more_backbones, pretrained.fine_tune_blocks) == (
        "vgg16",
        [],
        0,
    )
    assert pretrained.epochs == PROFILES["full"].pretrained.epochs


def test_the_pretrained_model_is_named_after_its_backbones_and_their_fine_tuning():
    two = TrainConfig(model="efficientnet_lite0", more_backbones=["efficientnet_lite2"])
    assert pretrained_name(two) == "efficientnet_lite0+efficientnet_lite2"
    assert pretrained_name(PROFILES["quick"].pretrained) == "efficientnet_lite0"
    full = PROFILES["full"].pretrained
    assert pretrained_name(full) == "efficientnet_lite0_fine_tuned"
    # Its tuned head is a head: trials do not fine-tune.
    assert backbones_name(full) == "efficientnet_lite0"
    assert "then its top 17 block(s) fine-tuned" in describe_pretrained(full)
    assert describe_pretrained(two) == "frozen ImageNet backbones under a genre head"
