"""Evaluate stage on a prepared synthetic run: metrics, report and bundle beside the model."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic import make_dataset, prepared_run

from poster_ray import data, metrics, models
from poster_ray.bundle import load_bundle
from poster_ray.config import PreprocessSpec
from poster_ray.errors import PosterRayError
from poster_ray.evaluate import (
    compare_models,
    evaluate_model_dir,
    format_headline,
    predict_arrays,
)
from poster_ray.layout import RunDir

SPEC = PreprocessSpec(32)
CONFIG = {"model": "custom_cnn", "epochs": 2, "batch_size": 16, "learning_rate": 1e-3}


@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory):
    """A 60-poster synthetic dataset prepared at 32x32."""
    root = make_dataset(tmp_path_factory.mktemp("dataset"), n=60)
    run = RunDir(tmp_path_factory.mktemp("run"))
    data.prepare(root, run, SPEC, seed=1)
    return run


@pytest.fixture(scope="module")
def model_dir(run):
    """A tiny CNN fitted for two epochs, saved as training would save it."""
    _, images, labels = data.read_split_arrays(run, "train")
    model = models.build_custom_cnn(
        len(run.load_genres()), image_size=SPEC.image_size, filters=(4, 4), dense_units=(8,)
    )
    models.compile_model(model)
    fit = model.fit(images, labels, epochs=2, batch_size=16, verbose=0)
    history = [
        {"epoch": epoch, "loss": loss, "val_loss": loss}
        for epoch, loss in enumerate(fit.history["loss"], start=1)
    ]
    directory = run.root.local_path / "models" / "custom_cnn"
    directory.mkdir(parents=True)
    model.save(directory / "model.keras")
    (directory / "history.json").write_text(json.dumps(history))
    (directory / "train_config.json").write_text(json.dumps(CONFIG))
    metrics.plot_history({"loss": fit.history["loss"]}, directory)
    return directory


@pytest.fixture(scope="module")
def result(model_dir, run):
    return evaluate_model_dir(model_dir, run)


@pytest.fixture(scope="module")
def written(result, model_dir):
    return json.loads((model_dir / "metrics.json").read_text())


def split_predictions(model_dir, run, split):
    _, images, labels = data.read_split_arrays(run, split)
    return labels, predict_arrays(models.load_model(model_dir / "model.keras"), images)


def test_metrics_json_layout(written, run):
    assert set(written) == {
        "model",
        "test_split",
        "genres",
        "thresholds",
        "headline",
        "test@0.5",
        "test@calibrated",
        "val@calibrated",
        "baselines",
    }
    assert written["model"] == "custom_cnn"
    assert written["genres"] == run.load_genres()
    test_size = len(data.read_split_arrays(run, "test")[0])
    assert written["test@0.5"]["n_samples"] == written["test@calibrated"]["n_samples"] == test_size
    assert all(row["threshold"] == 0.5 for row in written["test@0.5"]["per_genre"])


def test_thresholds_are_calibrated_on_the_val_split(written, model_dir, run):
    val_labels, val_prob = split_predictions(model_dir, run, "val")
    expected = metrics.calibrate_micro_f1_thresholds(val_labels, val_prob)
    np.testing.assert_allclose(written["thresholds"], expected)
    used = [row["threshold"] for row in written["test@calibrated"]["per_genre"]]
    np.testing.assert_allclose(used, expected)


def test_test_metrics_match_a_direct_computation(written, model_dir, run):
    test_labels, test_prob = split_predictions(model_dir, run, "test")
    genres = run.load_genres()
    direct = metrics.classification_metrics(test_labels, test_prob, written["thresholds"], genres)
    assert written["test@calibrated"]["micro"] == pytest.approx(direct["micro"])


def test_baselines_learn_from_the_train_split(written, run):
    manifest = pd.read_parquet(run.manifest)
    train = np.stack(manifest.loc[manifest["split"] == "train", "labels"].to_numpy())
    test_labels = data.read_split_arrays(run, "test")[2]
    expected = metrics.baseline_metrics(train, test_labels, run.load_genres())
    assert written["baselines"] == json.loads(json.dumps(expected))


def test_result_holds_the_headline_numbers(result, written):
    constant = next(name for name in written["baselines"] if name.startswith("always "))
    assert result["micro_f1@0.5"] == written["test@0.5"]["micro"]["f1"]
    assert result["micro_f1@calibrated"] == written["test@calibrated"]["micro"]["f1"]
    assert result["baseline"] == constant
    assert result["baseline_micro_f1"] == written["baselines"][constant]["micro"]["f1"]
    assert {k: v for k, v in result.items() if k != "rows"} == written["headline"]


def test_report_shows_model_baselines_and_curves(result, written, model_dir):
    report = (model_dir / "report.md").read_text()
    assert report.startswith("# Evaluation report\n")
    assert "Model `custom_cnn`, trained for 2 epochs" in report
    assert '"batch_size": 16' in report
    for name in ["model @ 0.5", "model @ calibrated", *written["baselines"]]:
        assert f"| {name} |" in report
    assert "![curve_loss](curve_loss.png)" in report


def test_format_headline_lists_every_row(result):
    text = format_headline(result)
    for name in result["rows"]:
        assert f"| {name} |" in text
    assert result["baseline"] in text.splitlines()[-1]


def test_bundle_carries_the_calibrated_thresholds(result, written, model_dir, run):
    bundle = load_bundle(model_dir / "bundle")
    np.testing.assert_allclose(bundle.thresholds, written["thresholds"])
    assert bundle.genres == run.load_genres()
    assert bundle.spec == SPEC
    assert bundle.info["train_config"] == {**CONFIG, "name": "custom_cnn"}
    assert bundle.info["metrics"] == written["headline"]


def test_a_model_for_another_genre_list_is_refused(run, tmp_path):
    model = models.build_custom_cnn(3, image_size=SPEC.image_size, filters=(4, 4), dense_units=(8,))
    model.save(tmp_path / "model.keras")
    with pytest.raises(PosterRayError, match="outputs 3 genres but the genre list has 6"):
        evaluate_model_dir(tmp_path, run)


def save_untrained_model(run: RunDir, name: str) -> Path:
    """A second model to compare: the same CNN, never trained."""
    model = models.build_custom_cnn(
        len(run.load_genres()), image_size=SPEC.image_size, filters=(4, 4), dense_units=(8,)
    )
    directory = run.root.local_path / "models" / name
    directory.mkdir(parents=True)
    model.save(directory / "model.keras")
    return directory


def test_compare_tables_every_model_of_a_run_beside_the_baselines(result, run):
    evaluate_model_dir(save_untrained_model(run, "untrained"), run)
    table = compare_models([run.root])
    names = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert names[:4] == [
        "custom_cnn @ calibrated",
        "custom_cnn @ 0.5",
        "untrained @ calibrated",
        "untrained @ 0.5",
    ]
    assert any(name.startswith("always ") for name in names[4:])
    assert "| micro F1 | macro F1 |" in table and "ROC-AUC" in table


def test_compare_refuses_models_tested_on_different_posters(result, model_dir, tmp_path):
    other = prepared_run(tmp_path, n=60, image_size=SPEC.image_size, seed=3)
    other_model = save_untrained_model(other, "custom_cnn")
    evaluate_model_dir(other_model, other)
    with pytest.raises(PosterRayError, match="different test splits"):
        compare_models([model_dir, other_model])


def test_compare_names_a_path_that_is_not_an_evaluated_model(tmp_path):
    with pytest.raises(PosterRayError, match="neither an evaluated model"):
        compare_models([tmp_path])


def test_compare_command_prints_and_writes_the_table(result, run, tmp_path, capsys):
    from poster_ray.cli import main

    output = tmp_path / "report" / "comparison.md"
    assert main(["compare", str(run.root / "models" / "custom_cnn"), "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "custom_cnn @ calibrated" in printed and f"wrote {output}" in printed
    assert compare_models([run.root / "models" / "custom_cnn"]) in output.read_text()
