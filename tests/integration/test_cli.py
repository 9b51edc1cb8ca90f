"""The `poster-ray` command: user errors are one line on stderr with exit 2."""

from __future__ import annotations

import dataclasses
import typing

import pandas as pd
import pytest

from poster_ray import cli
from poster_ray.cli import PIPELINE_HARDWARE_FIELDS, TUNED_MODEL_FIELDS, build_parser, main
from poster_ray.config import (
    InferSettings,
    PrepareSettings,
    RaySettings,
    ReportSettings,
    TrackingSettings,
    TrainConfig,
    TuneSettings,
)
from poster_ray.options import flag_of, value_type


def assert_one_line_error(capsys, *fragments: str) -> None:
    err = capsys.readouterr().err
    assert err.startswith("poster-ray: error: ")
    assert err.count("\n") == 1
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_prepare_with_a_folder_without_train_csv(tmp_path, capsys):
    assert main(["prepare", "--data", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    assert_one_line_error(capsys, str(tmp_path), "no train.csv")
    assert not (tmp_path / "run").exists()


def test_prepare_with_a_bad_csv(tmp_path, capsys):
    (tmp_path / "train.csv").write_text("Id,Genre,Action,N/A\ntt1,[],yes,0\n")
    assert main(["prepare", "--data", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    assert_one_line_error(capsys, "train.csv line 2", "column 'Action'", "'yes'")


def test_prepare_uses_the_env_var(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("POSTER_DATA", str(tmp_path / "from-env"))
    assert main(["prepare", "--out", str(tmp_path / "run")]) == 2
    assert_one_line_error(capsys, "from-env")


def test_unknown_option_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["prepare", "--no-such-option"])
    assert caught.value.code == 2


def test_prepare_writes_the_run_and_prints_the_summary(
    ray_session, synthetic_dataset, tmp_path, capsys
):
    out = tmp_path / "run"
    argv = ["prepare", "--data", str(synthetic_dataset), "--out", str(out)]
    argv += ["--num-cpus", "2", "--image-size", "16", "--seed", "5"]
    assert main(argv) == 0

    printed = capsys.readouterr().out
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) == 40
    counts = manifest["split"].value_counts()
    assert "kept:     40 posters, 6 genres, 16x16 px" in printed
    assert f"train {counts['train']}, val {counts['val']}, test {counts['test']}" in printed
    assert "dropped:  nothing" in printed
    assert f"wrote {out} in" in printed


def test_tune_needs_a_prepared_run(tmp_path, capsys):
    assert main(["tune", str(tmp_path), "--trials", "3"]) == 2
    assert_one_line_error(capsys, str(tmp_path), "not a prepared run")


def test_tune_refuses_training_precision_as_the_objective(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["tune", str(tmp_path), "--objective", "precision"])
    assert caught.value.code == 2
    assert "invalid choice: 'precision'" in capsys.readouterr().err


# ---------------------------------------------------------------- settings from flags

# Each command and the settings classes its options are generated from (None: every field).
COMMAND_SETTINGS = [
    (["prepare"], "prepare", PrepareSettings, None),
    (["train", "RUN"], "train", TrainConfig, None),
    (["train", "RUN"], "ray", RaySettings, None),
    (["tune", "RUN"], "train", TrainConfig, TUNED_MODEL_FIELDS),
    (["tune", "RUN"], "tune", TuneSettings, None),
    (["infer", "BUNDLE", "--input", "IN", "--output", "OUT"], "infer", InferSettings, None),
    (["pipeline"], "prepare", PrepareSettings, None),
    (["pipeline"], "hardware", TrainConfig, PIPELINE_HARDWARE_FIELDS),
    (["pipeline"], "tune", TuneSettings, None),
    (["train", "RUN"], "tracking", TrackingSettings, None),
    (["tune", "RUN"], "tracking", TrackingSettings, None),
    (["pipeline"], "tracking", TrackingSettings, None),
    (["report", "PATH"], "report", ReportSettings, None),
]


def a_value_for(field: dataclasses.Field, annotation) -> tuple[list[str], object]:
    """Flag arguments that set `field` to something other than its default, and that value."""
    flag, kind = flag_of(field), value_type(annotation)
    choices = field.metadata["choices"]
    if kind is bool:
        return [flag], True
    if kind is dict:
        return [flag, '{"units": 8}'], {"units": 8}
    if kind is list:
        return [flag, '[{"units": 8}]'], [{"units": 8}]
    if choices:
        value = next(choice for choice in choices if choice != field.default)
        return [flag, str(value)], value
    value = {int: 7, float: 0.5, str: "somewhere"}[kind]
    if field.metadata.get("minimum") is not None:  # within the field's range
        value = max(value, kind(field.metadata["minimum"]) + 1)
    return [flag, str(value)], value


@pytest.mark.parametrize(("command", "group", "settings", "only"), COMMAND_SETTINGS)
def test_every_setting_has_a_flag_with_help_that_sets_it(command, group, settings, only):
    parser = build_parser()
    fields = [field for field in dataclasses.fields(settings) if only is None or field.name in only]
    hints = typing.get_type_hints(settings)
    for field in fields:
        argv, value = a_value_for(field, hints[field.name])
        args = parser.parse_args([*command, *argv])
        assert getattr(args.options[group].build(args), field.name) == value, field.name
        assert field.metadata["help"], f"{settings.__name__}.{field.name} has no help"


def test_flags_keep_their_names_and_reach_the_fields_named_after_them():
    args = build_parser().parse_args(
        ["tune", "RUN", "--workers-per-trial", "2", "--searcher-seed", "3", "--time-budget", "60"]
    )
    settings = args.options["tune"].build(args)
    assert (settings.workers_per_trial, settings.searcher_seed, settings.time_budget) == (2, 3, 60)
    args = build_parser().parse_args(["prepare", "--seed", "5", "--limit", "10"])
    prepare = args.options["prepare"].build(args)
    assert (prepare.seed, prepare.limit) == (5, 10)


def test_options_left_out_leave_the_dataclass_defaults():
    args = build_parser().parse_args(["infer", "B", "--input", "I", "--output", "O"])
    assert args.options["infer"].build(args) == InferSettings()
    args = build_parser().parse_args(["train", "RUN"])
    assert args.options["train"].build(args) == TrainConfig()


def test_hparams_that_are_not_a_json_object_are_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["train", "RUN", "--hparams", "[1, 2]"])
    assert caught.value.code == 2
    assert "--hparams: not a JSON object" in capsys.readouterr().err


def test_a_training_flag_reaches_train_as_its_typed_config(tmp_path, monkeypatch):
    from poster_ray import runtime, train

    # Enough for `existing_run`, which reads the manifest's footer, genres and spec.
    pd.DataFrame({"id": ["tt1"]}).to_parquet(tmp_path / "manifest.parquet")
    (tmp_path / "genres.json").write_text('["Action"]')
    (tmp_path / "preprocess.json").write_text('{"image_size": 16, "resample": "bilinear"}')
    received = {}
    monkeypatch.setattr(runtime, "init_ray", lambda num_cpus: received.update(num_cpus=num_cpus))
    monkeypatch.setattr(
        train, "train", lambda run, name, config: received.update(name=name, config=config)
    )
    monkeypatch.setattr(cli, "evaluate_and_print", lambda model_dir, run: None)
    argv = ["train", str(tmp_path), "--learning-rate", "0.01", "--no-in-memory", "--num-cpus", "1"]
    assert main([*argv, "--hparams", '{"filters": [4]}']) == 0
    config = received["config"]
    assert (config.learning_rate, config.in_memory, config.hparams) == (
        0.01,
        False,
        {"filters": [4]},
    )
    assert received["name"] == config.model and received["num_cpus"] == 1


def test_the_workers_receive_the_training_settings_typed(ray_session, tmp_path):
    import ray

    from poster_ray import trainer as train_runs
    from poster_ray.loop_config import LOOP_CONFIG_KEY, ModelInputs, Steps
    from poster_ray.storage import Location

    args = build_parser().parse_args(["train", "RUN", "--learning-rate", "0.01", "--workers", "1"])
    config = dataclasses.replace(args.options["train"].build(args), cpus_per_worker=1.0)
    rows = ray.data.from_items([{"image": 0, "labels": 0}] * 64)
    inputs = ModelInputs("image", (16, 16, 3), 3)
    data = train_runs.TrainingData(
        {"train_0": rows, "val_0": rows}, 64, 64, inputs, [1.0, 1.0, 1.0]
    )
    trainer = train_runs.make_trainer(data, config, "probe", Location.of(tmp_path))
    loop = trainer.train_loop_config[LOOP_CONFIG_KEY]
    assert loop.settings == config and loop.inputs == inputs
    assert loop.train_steps == Steps(batch=config.batch_size, steps=64 // config.batch_size)
    assert loop.monitor_mode == "min"  # val_loss, the default monitor
