"""Every failure a user can cause is one line on stderr, with exit status 2 (a usage error)
or 1 (a failed run), and leaves the run's finished files as they were. No Ray: each is
caught before Ray would start."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import ray
from synthetic import make_dataset

from poster_ray import cli
from poster_ray.cli import INTERRUPTED, main
from poster_ray.data import prepare as prepare_module
from poster_ray.errors import RunFailure, Terminated
from poster_ray.layout import RunDir


def one_line_error(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("poster-ray") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


def exit_status(argv: list[str]) -> int:
    """main's status, also when argparse exits (SystemExit) on a bad flag."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


@pytest.fixture
def ray_starts(monkeypatch) -> list[dict]:
    """Every attempt to start Ray during the test, as if no Ray ran in this process (in
    `make test` another test file's Ray may): each is refused and recorded."""
    starts: list[dict] = []

    def refuse(**options) -> None:
        starts.append(options)
        raise RuntimeError("the command started Ray")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    return starts


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), n=12)


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (["--limit", "-5"], ["argument --limit: must be at least 10, got -5"]),
        (["--image-size", "0"], ["argument --image-size: must be at least 1"]),
        (["--seed", "x"], ["argument --seed: invalid int value: 'x'"]),
        (["--num-cpus", "0"], ["argument --num-cpus: must be at least 1"]),
    ],
)
def test_a_flag_out_of_range_is_one_line(dataset, tmp_path, capsys, flags, fragments):
    argv = ["prepare", "--data", str(dataset), "--out", str(tmp_path / "run"), *flags]
    assert exit_status(argv) == 2
    one_line_error(capsys, *fragments)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        (["train", "RUN", "--learning-rate", "0"], "--learning-rate: must be greater than 0"),
        (["train", "RUN", "--epochs", "0"], "--epochs: must be at least 1"),
        (["tune", "RUN", "--reduction-factor", "1"], "--reduction-factor: must be at least 2"),
        (["infer", "B", "--input", "I", "--output", "O", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_every_stage_checks_its_numbers(capsys, command, flag):
    assert exit_status(command) == 2
    one_line_error(capsys, flag)


def test_prepare_into_a_file_is_refused_before_ray(dataset, tmp_path, capsys, ray_starts):
    (tmp_path / "taken").write_text("mine\n")
    assert main(["prepare", "--data", str(dataset), "--out", str(tmp_path / "taken")]) == 2
    one_line_error(capsys, "--out", "a file is there, not a folder")
    assert (tmp_path / "taken").read_text() == "mine\n" and not ray_starts


@pytest.mark.skipif(os.access("/proc/sys", os.W_OK), reason="needs a read-only filesystem")
def test_prepare_onto_a_read_only_filesystem_is_refused(dataset, capsys):
    assert main(["prepare", "--data", str(dataset), "--out", "/proc/sys/poster-run"]) == 2
    one_line_error(capsys, "/proc/sys is not writable")


def test_an_image_size_whose_cache_cannot_fit_is_refused_with_the_figure(
    dataset, tmp_path, capsys, ray_starts
):
    argv = ["prepare", "--data", str(dataset), "--out", str(tmp_path / "run")]
    assert main([*argv, "--image-size", "100000"]) == 2
    one_line_error(capsys, "--image-size 100000: a decode block in memory needs", "at most")
    assert not (tmp_path / "run").exists() and not ray_starts


def test_a_dataset_whose_images_folder_is_empty_says_so(tmp_path, capsys):
    root = make_dataset(tmp_path / "data", n=12)
    for poster in (root / "Images").iterdir():
        poster.unlink()
    assert main(["prepare", "--data", str(root), "--out", str(tmp_path / "run")]) == 2
    one_line_error(capsys, "Images: none of the 12 posters of the CSV is there")


def a_prepared_run(root) -> RunDir:
    """A run's files as prepare leaves them (the tests need no real cache)."""
    run = RunDir(root)
    (root / "cache" / "16px").mkdir(parents=True)
    (root / "cache" / "16px" / "part.parquet").write_bytes(b"old pixels")
    (root / "models" / "cnn").mkdir(parents=True)
    (root / "models" / "cnn" / "model.keras").write_bytes(b"old model")
    for location, text in [(run.genres, '["Action", "Drama"]'), (run.dropped, "id\n")]:
        location.write_text(text)
    run.preprocess.write_json({"image_size": 16, "resample": "bilinear"})
    run.manifest.write_bytes(b"PAR1 old manifest PAR1")
    run.summary.write_json({"fingerprint": "old"})
    return run


def snapshot(root) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()
    }


def test_a_failed_prepare_leaves_the_run_as_it_was(dataset, tmp_path, capsys, monkeypatch):
    run = a_prepared_run(tmp_path / "run")
    before = snapshot(run.root.local_path)

    def decode_fails(records, staging, spec):
        (staging.cache(spec.image_size)).mkdir()
        (staging.cache(spec.image_size) / "half.parquet").write_bytes(b"half")
        raise RuntimeError("Unable to allocate 1.09 TiB")

    monkeypatch.setattr(prepare_module, "init_ray", lambda num_cpus: None)
    monkeypatch.setattr(prepare_module, "warn_if_local_on_a_cluster", lambda root: None)
    monkeypatch.setattr(prepare_module, "ray_logs_dir", lambda: "LOGS")
    monkeypatch.setattr(prepare_module, "decode_to_cache", decode_fails)
    argv = ["prepare", "--data", str(dataset), "--out", str(run.root), "--image-size", "8"]
    assert main(argv) == 1
    one_line_error(capsys, "prepare failed (Unable to allocate 1.09 TiB)", "is as it was before")
    assert snapshot(run.root.local_path) == before


def test_a_finished_prepare_swaps_the_new_run_in_and_the_stale_outputs_out(tmp_path):
    run = a_prepared_run(tmp_path / "run")
    staging = RunDir(run.staging)
    (staging.root.local_path / "cache" / "8px").mkdir(parents=True)
    (staging.root.local_path / "cache" / "8px" / "part.parquet").write_bytes(b"new pixels")
    for location in prepare_module.prepared_files(staging)[:-1]:
        location.write_text("new")
    staging.summary.write_json({"fingerprint": "new"})

    prepare_module.swap_in(staging, run, "new")

    assert snapshot(run.root.local_path) == {
        "cache/8px/part.parquet": b"new pixels",
        **{name: b"new" for name in ("manifest.parquet", "genres.json", "preprocess.json")},
        "dropped.csv": b"new",
        "prepare_summary.json": json.dumps({"fingerprint": "new"}, indent=2).encode() + b"\n",
    }  # the old split's model is gone with its cache: it no longer matches the run


def test_train_on_a_truncated_manifest_names_the_file(tmp_path, capsys, ray_starts):
    run = a_prepared_run(tmp_path / "run")
    assert main(["train", str(run.root)]) == 1
    one_line_error(capsys, "manifest.parquet: damaged, not a readable Parquet file", "rerun")
    assert not ray_starts


def test_a_damaged_json_file_of_a_run_names_the_file(tmp_path, capsys):
    run = a_prepared_run(tmp_path / "run")
    pd.DataFrame({"id": ["tt1"]}).to_parquet(run.manifest.local_path)
    run.genres.write_text('["Action", "Dra')  # cut short
    assert main(["train", str(run.root)]) == 1
    one_line_error(capsys, "genres.json: damaged, not valid JSON")


def test_an_edited_preprocessing_spec_names_the_file(tmp_path, capsys):
    run = a_prepared_run(tmp_path / "run")
    pd.DataFrame({"id": ["tt1"]}).to_parquet(run.manifest.local_path)
    run.preprocess.write_json({"image_size": -3, "resample": "bilinear"})
    assert main(["train", str(run.root)]) == 1
    one_line_error(capsys, "preprocess.json: not a preprocessing spec")


def test_infer_refuses_an_unsafe_bundle_on_the_driver(tmp_path, capsys, ray_starts):
    import tf_keras as keras

    from poster_ray.bundle import write_bundle
    from poster_ray.config import PreprocessSpec

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Lambda(lambda t: t / 255.0)(inputs)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inputs, outputs).save(tmp_path / "lambda.keras")
    bundle = tmp_path / "bundle"
    write_bundle(
        bundle, tmp_path / "lambda.keras", ["A", "B"], PreprocessSpec(8), [0.5] * 2, {}, {}
    )
    (tmp_path / "posters").mkdir()
    (tmp_path / "posters" / "a.jpg").write_bytes(b"not read")
    argv = ["infer", str(bundle), "--input", str(tmp_path / "posters")]
    assert main([*argv, "--output", str(tmp_path / "out")]) == 2
    one_line_error(capsys, "refusing to load this model: a Lambda layer")
    assert not ray_starts


@pytest.mark.parametrize(
    ("interrupt", "status"), [(KeyboardInterrupt, 130), (Terminated, 143)], ids=["int", "term"]
)
def test_an_interrupt_is_one_line_saying_what_was_kept(monkeypatch, capsys, interrupt, status):
    def stopped(args):
        raise interrupt()

    monkeypatch.setattr(cli, "cmd_train", stopped)
    assert main(["train", "RUN"]) == status
    assert capsys.readouterr().err == f"poster-ray: interrupted: {INTERRUPTED['train']}\n"


def test_an_error_raised_while_an_interrupt_unwinds_is_the_interrupt(monkeypatch, capsys):
    """A library's clean-up that fails as Ctrl-C unwinds it: the user still stopped it."""

    def clean_up_fails(args):
        try:
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("executor already shut down")

    monkeypatch.setattr(cli, "cmd_infer", clean_up_fails)
    assert main(["infer", "B", "--input", "I", "--output", "O"]) == 130
    assert capsys.readouterr().err == f"poster-ray: interrupted: {INTERRUPTED['infer']}\n"


def test_an_error_with_no_interrupt_behind_it_is_not_one(monkeypatch):
    def fails(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "cmd_infer", fails)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["infer", "B", "--input", "I", "--output", "O"])


def test_a_failed_run_exits_1(monkeypatch, capsys):
    def fails(args):
        raise RunFailure("the disk is full")

    monkeypatch.setattr(cli, "cmd_prepare", fails)
    assert main(["prepare"]) == 1
    one_line_error(capsys, "the disk is full")
