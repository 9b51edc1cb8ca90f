"""Export's bundle and the evaluate stage on a prepared synthetic run: thresholds
calibrated on val, metrics and report beside the model."""

import json

import numpy as np
import pandas as pd
import pytest
from synthetic import make_dataset, prepared_run

from poster_ray import metrics, models
from poster_ray.bundle import load_bundle
from poster_ray.config import PreprocessSpec
from poster_ray.data.cache import read_split_arrays, train_labels
from poster_ray.data.prepare import prepare
from poster_ray.errors import PosterRayError
from poster_ray.evaluate import (
    compare_models,
    evaluate_model_dir,
    format_headline,
    predict_arrays,
)
from poster_ray.export import export_bundle
from poster_ray.layout import ModelDir, RunDir
from poster_ray.plots import plot_history
from poster_ray.storage import Location
from poster_ray.thresholds import choose_thresholds
from poster_ray.verdict import micro_f1_difference

SPEC = PreprocessSpec(32)
CONFIG = {"model": "custom_cnn", "epochs": 2, "batch_size": 16, "learning_rate": 1e-3}


@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory):
    """A 60-poster synthetic dataset prepared at 32x32."""
    root = make_dataset(tmp_path_factory.mktemp("dataset"), n=60)
    run = RunDir(tmp_path_factory.mktemp("run"))
    prepare(root, run, SPEC, seed=1)
    return run


@pytest.fixture(scope="module")
def model_dir(run) -> ModelDir:
    """A tiny CNN fitted for two epochs, saved and exported as training would."""
    _, images, labels = read_split_arrays(run, "train")
    model = models.build_custom_cnn(
        len(run.load_genres()), image_size=SPEC.image_size, filters=(4, 4), dense_units=(8,)
    )
    models.compile_model(model)
    fit = model.fit(images, labels, epochs=2, batch_size=16, verbose=0)
    history = [
        {"epoch": epoch, "loss": loss, "val_loss": loss}
        for epoch, loss in enumerate(fit.history["loss"], start=1)
    ]
    directory = run.model("custom_cnn")
    directory.root.local_path.mkdir(parents=True)
    model.save(directory.model.local_path)
    directory.history.write_json(history)
    directory.train_config.write_json(CONFIG)
    plot_history({"loss": fit.history["loss"]}, directory)
    export_bundle(run, directory)
    return directory


@pytest.fixture(scope="module")
def result(model_dir, run):
    return evaluate_model_dir(model_dir.root, run)


@pytest.fixture(scope="module")
def written(result, model_dir):
    return model_dir.metrics.read_json()


def split_predictions(model_dir: ModelDir, run, split):
    _, images, labels = read_split_arrays(run, split)
    return labels, predict_arrays(models.load_model(model_dir.model.local_path), images)


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
        "versus_baseline",
    }
    assert written["model"] == "custom_cnn"
    assert written["genres"] == run.load_genres()
    test_size = len(read_split_arrays(run, "test")[0])
    assert written["test@0.5"]["n_samples"] == written["test@calibrated"]["n_samples"] == test_size
    assert all(row["threshold"] == 0.5 for row in written["test@0.5"]["per_genre"])


def test_thresholds_are_calibrated_on_the_val_split(written, model_dir, run):
    val_labels, val_prob = split_predictions(model_dir, run, "val")
    expected, policy = choose_thresholds("auto", val_labels, val_prob)
    np.testing.assert_allclose(written["thresholds"], expected)
    used = [row["threshold"] for row in written["test@calibrated"]["per_genre"]]
    np.testing.assert_allclose(used, expected)
    assert load_bundle(model_dir.bundle).info["threshold_policy"] == policy


def test_a_named_threshold_policy_sets_the_bundle_that_evaluate_applies(model_dir, run, tmp_path):
    """`--threshold-policy global` reaches the bundle through train_config.json."""
    other = ModelDir(tmp_path)
    other.model.write_bytes(model_dir.model.read_bytes())
    other.train_config.write_json({**CONFIG, "threshold_policy": "global"})
    export_bundle(run, other)
    bundle = load_bundle(other.bundle)
    assert bundle.info["threshold_policy"] == {"requested": "global", "policy": "global"}
    val_labels, val_prob = split_predictions(model_dir, run, "val")
    global_threshold = metrics.calibrate_global_threshold(val_labels, val_prob)
    np.testing.assert_allclose(bundle.thresholds, global_threshold)
    evaluate_model_dir(other.root, run)
    np.testing.assert_allclose(other.metrics.read_json()["thresholds"], bundle.thresholds)


def test_test_metrics_match_a_direct_computation(written, model_dir, run):
    test_labels, test_prob = split_predictions(model_dir, run, "test")
    genres = run.load_genres()
    direct = metrics.classification_metrics(test_labels, test_prob, written["thresholds"], genres)
    assert written["test@calibrated"]["micro"] == pytest.approx(direct["micro"])


def test_each_test_posters_probabilities_are_kept_for_the_run_report(written, model_dir, run):
    _, test_prob = split_predictions(model_dir, run, "test")
    kept = pd.read_parquet(model_dir.test_predictions)
    ids, _, _ = read_split_arrays(run, "test", SPEC.image_size)
    assert list(kept["id"]) == list(ids)
    np.testing.assert_allclose(np.stack(kept["probabilities"]), test_prob, atol=1e-6)


def test_baselines_learn_from_the_train_split(written, run):
    manifest = pd.read_parquet(run.manifest)
    train = np.stack(manifest.loc[manifest["split"] == "train", "labels"].to_numpy())
    test_labels = read_split_arrays(run, "test")[2]
    expected = metrics.baseline_metrics(train, test_labels, run.load_genres())
    assert written["baselines"] == json.loads(json.dumps(expected))


def test_result_holds_the_headline_numbers(result, written):
    constant = next(name for name in written["baselines"] if name.startswith("always "))
    assert result["micro_f1@0.5"] == written["test@0.5"]["micro"]["f1"]
    assert result["micro_f1@calibrated"] == written["test@calibrated"]["micro"]["f1"]
    assert result["baseline"] == constant
    assert result["baseline_micro_f1"] == written["baselines"][constant]["micro"]["f1"]
    assert {k: v for k, v in result.items() if k != "rows"} == written["headline"]


def test_the_verdict_rests_on_a_paired_bootstrap_of_the_test_posters(result, written, run):
    test_labels = read_split_arrays(run, "test")[2]
    constant = metrics.constant_top_k_baseline(train_labels(run), len(test_labels))
    test_prob = split_predictions(ModelDir(run.model("custom_cnn").root), run, "test")[1]
    expected = micro_f1_difference(test_labels, test_prob >= written["thresholds"], constant)
    assert written["versus_baseline"]["model @ calibrated"] == pytest.approx(expected)
    versus = result["versus_baseline"]
    assert versus == written["headline"]["versus_baseline"]
    assert versus["difference"] == pytest.approx(
        result["micro_f1@calibrated"] - result["baseline_micro_f1"]
    )
    assert result["beats_baseline"] == (versus["low"] > 0)
    assert f"{versus['verdict']} '{result['baseline']}'" in format_headline(result)


def test_report_shows_model_baselines_and_curves(result, written, model_dir):
    report = model_dir.report.read_text()
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


def test_the_exported_bundle_carries_the_thresholds_evaluate_applied(
    result, written, model_dir, run
):
    bundle = load_bundle(model_dir.bundle)
    np.testing.assert_allclose(bundle.thresholds, written["thresholds"])
    assert bundle.genres == run.load_genres()
    assert bundle.spec == SPEC
    assert bundle.info["train_config"] == {**CONFIG, "name": "custom_cnn"}
    # What the thresholds scored on the posters they were calibrated on: evaluate's
    # in-sample validation row.
    val_labels, val_prob = split_predictions(model_dir, run, "val")
    at_half = metrics.classification_metrics(val_labels, val_prob, 0.5, run.load_genres())
    validation = written["val@calibrated"]
    assert bundle.info["metrics"] == {
        "split": "val",
        "posters": validation["n_samples"],
        "micro_f1@0.5": pytest.approx(at_half["micro"]["f1"]),
        "micro_f1@calibrated": pytest.approx(validation["micro"]["f1"]),
    }


def test_a_model_for_another_genre_list_is_refused(run, tmp_path):
    model = models.build_custom_cnn(3, image_size=SPEC.image_size, filters=(4, 4), dense_units=(8,))
    model_dir = ModelDir(tmp_path)
    model.save(model_dir.model.local_path)
    with pytest.raises(PosterRayError, match="outputs 3 genres but the genre list has 6"):
        export_bundle(run, model_dir)


def test_evaluate_without_a_bundle_says_how_to_export_one(run, tmp_path):
    model_dir = ModelDir(tmp_path)
    untrained_model(run).save(model_dir.model.local_path)
    with pytest.raises(PosterRayError, match=r"no bundle/ beside the model .*poster-ray train"):
        evaluate_model_dir(model_dir.root, run)


def untrained_model(run: RunDir):
    return models.build_custom_cnn(
        len(run.load_genres()), image_size=SPEC.image_size, filters=(4, 4), dense_units=(8,)
    )


def export_untrained_model(run: RunDir, name: str) -> Location:
    """A second model to compare: the same CNN, never trained, exported."""
    directory = run.model(name)
    directory.root.local_path.mkdir(parents=True)
    untrained_model(run).save(directory.model.local_path)
    export_bundle(run, directory)
    return directory.root


def test_compare_tables_every_model_of_a_run_beside_the_baselines(result, run):
    evaluate_model_dir(export_untrained_model(run, "untrained"), run)
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
    header = table.splitlines()[0]
    assert "micro F1 - always " in header and header.endswith("| verdict |")
    model_row = table.splitlines()[2]
    versus = ModelDir(run.model("custom_cnn").root).metrics.read_json()["versus_baseline"]
    assert model_row.endswith(f"| {versus['model @ calibrated']['verdict']} |")


def test_compare_refuses_models_tested_on_different_posters(result, model_dir, tmp_path):
    other = prepared_run(tmp_path, n=60, image_size=SPEC.image_size, seed=3)
    other_model = export_untrained_model(other, "custom_cnn")
    evaluate_model_dir(other_model, other)
    with pytest.raises(PosterRayError, match="different test splits"):
        compare_models([model_dir.root, other_model])


def test_compare_names_a_path_that_is_not_an_evaluated_model(tmp_path):
    with pytest.raises(PosterRayError, match="neither an evaluated model"):
        compare_models([tmp_path])


def test_compare_command_prints_and_writes_the_table(result, run, tmp_path, capsys):
    from poster_ray.cli import main

    output = tmp_path / "report" / "comparison.md"
    model_dir = run.model("custom_cnn").root
    assert main(["compare", str(model_dir), "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "custom_cnn @ calibrated" in printed and f"wrote {output}" in printed
    assert compare_models([model_dir]) in output.read_text()
