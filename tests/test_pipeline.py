"""The main command: every stage end to end on synthetic posters, with a tiny profile."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from synthetic import make_dataset, make_poster

from poster_ray.config import TrainConfig, TuneSettings
from poster_ray.pipeline import PipelineSettings, format_result, profile_settings, run_pipeline

# The seed's CNN needs ~94 px; small enough in width to train in seconds.
SMALL_CNN = {"filters": [8, 16, 32, 32], "kernel_size": 5, "dense_units": [32, 16]}
SMALL_POINT = {
    "learning_rate": 1e-3,
    "batch_size": 16,
    "filters": 8,
    "kernel_size": 5,
    "conv_dropout": 0.25,
    "dense_units": 32,
    "dense_dropout": 0.1,
}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, ray_session) -> dict:
    root = tmp_path_factory.mktemp("pipeline")
    dataset = make_dataset(root / "dataset", n=100)
    samples = dataset / "samples"
    samples.mkdir()
    make_poster(samples / "red.jpg", color=(220, 30, 30))
    make_poster(samples / "blue.jpg", color=(30, 30, 220))
    (samples / "broken.jpg").write_bytes(b"not a poster")
    settings = PipelineSettings(
        out=root / "run",
        data=str(dataset),
        image_size=96,
        train=TrainConfig(epochs=2, batch_size=16, hparams=SMALL_CNN),
        tune=TuneSettings(trials=2, max_epochs=1, start_points=[SMALL_POINT]),
    )
    result = run_pipeline(settings)
    return {"result": result, "root": root, "printed": format_result(result)}


def test_every_stage_leaves_its_output(pipeline):
    run = pipeline["result"].run.root
    for name in ("custom_cnn", "tuned_custom_cnn"):
        model = run / "models" / name
        for output in ("model.keras", "report.md", "metrics.json", "bundle/bundle.json"):
            assert (model / output).is_file(), (name, output)
    trials = pd.read_csv(run / "models" / "tuned_custom_cnn" / "trials.csv")
    assert len(trials) == 2
    comparison = (run / "comparison.md").read_text()
    for row in ("custom_cnn @ calibrated", "tuned_custom_cnn @ 0.5", "always ", "nothing"):
        assert row in comparison


def test_samples_are_predicted_and_a_broken_one_is_an_error_row(pipeline):
    rows = {row["path"].rsplit("/", 1)[-1]: row for row in pipeline["result"].predictions}
    assert set(rows) == {"red.jpg", "blue.jpg", "broken.jpg"}
    assert rows["broken.jpg"]["status"] == "error"
    assert len(rows["red.jpg"]["top3"]) == 3 and rows["blue.jpg"]["status"] == "ok"


def test_bulk_inference_writes_one_row_per_prepared_poster(pipeline):
    run = pipeline["result"].run
    manifest = pd.read_parquet(run.manifest)
    predictions = pd.read_parquet(run.root / "predictions")
    assert sorted(predictions["path"]) == sorted(manifest["path"])
    assert (predictions["status"] == "ok").all()
    summary = json.loads((run.root / "predictions" / "_summary.json").read_text())
    assert summary["files"] == summary["ok"] == len(manifest)


def test_the_verdict_names_each_model_against_the_baseline(pipeline):
    printed = pipeline["printed"]
    assert "custom_cnn: micro-F1" in printed and "tuned_custom_cnn: micro-F1" in printed
    assert str(pipeline["result"].comparison) in printed


def test_profiles_fill_what_the_command_line_leaves_out(tmp_path):
    quick = profile_settings("quick", tmp_path, limit=None, image_size=64)
    assert quick.limit == 1500 and quick.image_size == 64
    assert quick.train.epochs == 4 and quick.train.workers is None
    assert quick.train.precision == "auto"
