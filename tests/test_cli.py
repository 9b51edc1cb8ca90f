"""The `poster-ray` command: user errors are one line on stderr with exit 2."""

from __future__ import annotations

import pandas as pd
import pytest

from poster_ray.cli import main


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
