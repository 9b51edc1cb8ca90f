"""Finding the dataset: --data, else $POSTER_DATA, else the default folder (cloned if need be)."""

from __future__ import annotations

import subprocess

import pytest

from poster_ray.data import source
from poster_ray.data.source import resolve_data_dir
from poster_ray.errors import PosterRayError


def test_explicit_data_dir_without_train_csv(tmp_path):
    with pytest.raises(PosterRayError, match="no train.csv") as caught:
        resolve_data_dir(str(tmp_path), {})
    assert str(tmp_path) in str(caught.value)


def test_env_var_is_used_without_data(synthetic_dataset):
    resolved = resolve_data_dir(None, {"POSTER_DATA": str(synthetic_dataset)})
    assert resolved.local_path == synthetic_dataset


def test_data_argument_wins_over_env_var(synthetic_dataset, tmp_path):
    with pytest.raises(PosterRayError, match="no train.csv"):
        resolve_data_dir(str(tmp_path / "nowhere"), {"POSTER_DATA": str(synthetic_dataset)})


def test_default_dir_is_used_when_present(synthetic_dataset, monkeypatch):
    monkeypatch.setattr(source, "DEFAULT_DATA_DIR", synthetic_dataset)
    monkeypatch.setattr(source, "clone_dataset", lambda target: pytest.fail("cloned anyway"))
    assert resolve_data_dir(None, {}).local_path == synthetic_dataset


def test_failed_clone_is_one_line_naming_data_and_env_var(tmp_path, monkeypatch):
    target = tmp_path / "data" / "Movies-Poster_Dataset"
    monkeypatch.setattr(source, "DEFAULT_DATA_DIR", target)
    monkeypatch.setattr(source, "DATASET_URL", str(tmp_path / "no-such-repo"))  # git fails offline
    with pytest.raises(PosterRayError) as caught:
        resolve_data_dir(None, {})
    message = str(caught.value)
    assert "\n" not in message
    assert "--data" in message and "POSTER_DATA" in message
    assert not target.exists()  # no half-cloned folder left behind


def test_missing_git_is_one_line_error(tmp_path, monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(source, "DEFAULT_DATA_DIR", tmp_path / "default")
    monkeypatch.setattr(subprocess, "run", no_git)
    with pytest.raises(PosterRayError, match="FileNotFoundError.*--data DIR.*POSTER_DATA"):
        resolve_data_dir(None, {})


def test_failed_clone_keeps_a_users_existing_folder(tmp_path, monkeypatch):
    target = tmp_path / "default"
    (target / "Images").mkdir(parents=True)
    (target / "Images" / "tt1.jpg").write_bytes(b"mine")
    monkeypatch.setattr(source, "DEFAULT_DATA_DIR", target)
    monkeypatch.setattr(source, "DATASET_URL", str(tmp_path / "no-such-repo"))
    with pytest.raises(PosterRayError, match="could not clone"):
        resolve_data_dir(None, {})
    assert (target / "Images" / "tt1.jpg").read_bytes() == b"mine"
