"""Bulk inference: one row per input whatever the file, resume, idempotence, crashed actors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tf_keras as keras
from PIL import Image
from synthetic import make_poster, png_claiming_size

from poster_ray import infer, models
from poster_ray.bundle import Bundle, write_bundle
from poster_ray.cli import main
from poster_ray.config import PreprocessSpec
from poster_ray.errors import PosterRayError

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance"]
SPEC = PreprocessSpec(32)
THRESHOLDS = [0.5, 0.5, 0.5, 0.5, 0.5]
# The archive's files that must become error rows, by stem, and their error types.
BROKEN = {
    "truncated": "OSError",
    "empty": "ValueError",
    "notes": "UnidentifiedImageError",
    "bomb": "DecompressionBombError",
    "missing": "FileNotFoundError",  # only in the list file: it names a file that is not there
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A bundle of a tiny untrained CNN over five genres, at 32x32 px."""
    directory = tmp_path_factory.mktemp("bundle")
    keras.utils.set_random_seed(0)
    model = models.build_custom_cnn(
        len(GENRES), image_size=SPEC.image_size, filters=(4, 4), dense_units=(8,)
    )
    model.save(directory / "model.keras")
    return write_bundle(
        directory / "bundle", directory / "model.keras", GENRES, SPEC, THRESHOLDS, {}, {}
    )


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Posters in every mode and format, odd names, a subfolder, and broken files."""
    root = tmp_path_factory.mktemp("archive")
    (root / "sub dir").mkdir()
    for i in range(8):
        make_poster(root / f"tt{i:07d}.jpg", color=(30 * i, 90, 200 - 20 * i), noise=20, seed=i)
    for mode in ("L", "CMYK", "P", "RGBA", "I;16"):
        make_poster(root / f"mode_{mode.replace(';', '')}.png", mode=mode)
    make_poster(root / "affiche d'été – 東京.jpg")
    make_poster(root / "sub dir" / "UPPER CASE.JPEG")
    for extension in ("webp", "bmp", "gif"):
        Image.new("RGB", (40, 60), (10, 120, 30)).save(root / f"format.{extension}")
    truncated = root / "truncated.jpg"
    truncated.write_bytes(make_poster(root / "whole.jpg").read_bytes()[:300])
    (root / "empty.png").write_bytes(b"")
    (root / "notes.jpg").write_text("this is not an image\n")
    (root / "bomb.png").write_bytes(png_claiming_size(20_000, 20_000))
    (root / "readme.txt").write_text("not a poster: no image extension\n")
    return root


def image_files(root: Path) -> list[str]:
    return sorted(str(path) for path in root.rglob("*") if path.suffix != ".txt" and path.is_file())


@pytest.fixture(scope="module")
def list_file(archive, tmp_path_factory) -> Path:
    """Every image of the archive plus a path that does not exist, blank lines, a repeat."""
    paths = [*image_files(archive), str(archive / "missing.jpg"), "", image_files(archive)[0]]
    path = tmp_path_factory.mktemp("lists") / "posters.txt"
    path.write_text("\n".join(paths) + "\n")
    return path


@pytest.fixture(scope="module")
def finished(ray_session, bundle, list_file, tmp_path_factory) -> Path:
    """One complete CLI run over the list file, with every genre's probability."""
    out = tmp_path_factory.mktemp("finished") / "predictions"
    argv = ["infer", str(bundle), "--input", str(list_file), "--output", str(out)]
    assert main([*argv, "--all-probabilities", "--batch-size", "4"]) == 0
    return out


def read_output(out: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(part) for part in sorted(out.glob("part-*.parquet"))])


def mtimes(out: Path) -> dict[str, int]:
    return {part.name: part.stat().st_mtime_ns for part in out.glob("part-*.parquet")}


# ---------------------------------------------------------------- inputs, no Ray


def test_a_folder_gives_its_images_recursively_in_any_case(archive):
    paths = infer.resolve_inputs(str(archive))
    assert paths == image_files(archive)
    assert str(archive / "sub dir" / "UPPER CASE.JPEG") in paths
    assert str(archive / "readme.txt") not in paths


def test_a_glob_gives_what_it_matches(archive):
    assert infer.resolve_inputs(str(archive / "tt*.jpg")) == [
        str(archive / f"tt{i:07d}.jpg") for i in range(8)
    ]
    assert infer.resolve_inputs(str(archive / "**" / "*.JPEG")) == [
        str(archive / "sub dir" / "UPPER CASE.JPEG")
    ]


def test_a_list_file_keeps_missing_paths_and_drops_repeats(archive, list_file):
    assert infer.resolve_inputs(str(list_file)) == sorted(
        [*image_files(archive), str(archive / "missing.jpg")]
    )


def test_relative_paths_resolve_against_the_working_directory(archive, tmp_path, monkeypatch):
    monkeypatch.chdir(archive)
    (tmp_path / "relative.txt").write_text("tt0000001.jpg\nsub dir/UPPER CASE.JPEG\n")
    assert infer.resolve_inputs(str(tmp_path / "relative.txt")) == [
        str(archive / "sub dir" / "UPPER CASE.JPEG"),
        str(archive / "tt0000001.jpg"),
    ]


def test_a_parquet_file_gives_its_path_column(archive, tmp_path):
    paths = image_files(archive)[:3]
    pq.write_table(pa.table({"path": paths, "other": [1, 2, 3]}), tmp_path / "in.parquet")
    assert infer.resolve_inputs(str(tmp_path / "in.parquet")) == paths


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda tmp: tmp / "nowhere", "no such folder, file or matching glob"),
        (lambda tmp: tmp, "no poster files found"),
        (lambda tmp: tmp / "*.jpg", "no poster files found"),
        (lambda tmp: write_parquet(tmp / "in.parquet", {"file": ["a.jpg"]}), "no readable 'path'"),
        (lambda tmp: write_bytes(tmp / "in.lst", b"\xff\xfe\x00bad"), "not a UTF-8 text file"),
    ],
)
def test_unusable_inputs_are_one_clear_error(tmp_path, make_input, message):
    with pytest.raises(PosterRayError, match=message):
        infer.resolve_inputs(str(make_input(tmp_path)))


def write_parquet(path: Path, columns: dict) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_chunks_are_fixed_slices_of_the_sorted_list():
    assert infer.chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert infer.chunk_bounds(8, 4) == [(0, 4), (4, 8)]


# ---------------------------------------------------------------- rows and files, no Ray


def test_rows_of_ok_and_failed_files():
    bundle = Bundle(
        None, GENRES, SPEC, np.array([0.0, 1.0, 0.5, 0.5, 0.5]), {"content_hash": "h"}, None
    )
    probabilities = np.array([0.1, 0.9, 0.3, 0.6, 0.2], dtype=np.float32)
    ok = infer.output_row("/p/a b.jpg", "", probabilities, bundle, all_probabilities=True)
    failed = infer.output_row("/p/x.png", "ValueError: empty file", None, bundle, True)
    schema = infer.output_schema(len(GENRES), all_probabilities=True)
    table = pa.Table.from_pylist([ok, failed], schema=schema)

    assert table.column("id").to_pylist() == ["a b", "x"]
    assert [ok[f"top{k}_genre"] for k in (1, 2, 3)] == ["Comedy", "Horror", "Drama"]
    assert ok["above_threshold"] == ["Horror", "Action"]  # Comedy misses its 1.0 threshold
    assert (ok["status"], ok["error"], ok["bundle_hash"]) == ("ok", "", "h")
    assert failed["status"] == "error" and failed["error"] == "ValueError: empty file"
    assert failed["top1_genre"] is None and failed["top1_prob"] is None
    assert failed["above_threshold"] == [] and failed["probabilities"] is None


def test_a_failed_write_leaves_no_part_file(tmp_path, monkeypatch):
    (tmp_path / infer.TMP_DIR).mkdir()

    def write_half_then_crash(table, where):
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(infer.pq, "write_table", write_half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        infer.commit_part(pa.table({"path": ["a"]}), tmp_path, 0)
    assert infer.finished_chunks(tmp_path) == set()


def test_another_bundle_into_the_same_folder_is_refused(tmp_path):
    job = infer.job_record("in", ["/a.jpg"], Path("b"), "hash-1", 4, False)
    infer.claim_output_dir(tmp_path, job)
    infer.claim_output_dir(tmp_path, job)  # the same job again: fine
    with pytest.raises(PosterRayError, match=r"another job \(the bundle differ"):
        infer.claim_output_dir(tmp_path, {**job, "bundle_hash": "hash-2"})


# ---------------------------------------------------------------- the job, on Ray


def test_one_row_per_input_with_the_right_status(finished, archive, list_file):
    rows = read_output(finished)
    expected = infer.resolve_inputs(str(list_file))
    assert rows["path"].tolist() == expected  # sorted, no repeats, nothing lost
    failed = rows[rows["status"] == "error"]
    assert dict(zip(failed["id"], failed["error"].str.split(":").str[0], strict=True)) == BROKEN
    ok = rows[rows["status"] == "ok"]
    assert len(ok) == len(expected) - len(BROKEN)
    assert (ok["error"] == "").all() and ok["top1_genre"].isin(GENRES).all()
    assert "affiche d'été – 東京" in set(ok["id"])


def test_the_schema_and_the_probabilities(finished, bundle):
    table = pq.read_table(finished / "part-000000.parquet")
    assert table.schema.equals(infer.output_schema(len(GENRES), all_probabilities=True))
    rows = table.to_pandas()
    ok = rows[rows["status"] == "ok"]
    first = np.stack(ok["probabilities"].to_numpy())
    assert first.shape == (len(ok), len(GENRES))
    np.testing.assert_allclose(ok["top1_prob"], first.max(axis=1))
    assert ok["top1_genre"].tolist() == [GENRES[i] for i in first.argmax(axis=1)]
    assert (ok["top1_prob"] >= ok["top2_prob"]).all() and (ok["top2_prob"] >= ok["top3_prob"]).all()
    hash_ = json.loads((bundle / "bundle.json").read_text())["content_hash"]
    assert set(rows["bundle_hash"]) == {hash_}


def test_the_summary_is_printed_and_saved(finished, list_file):
    summary = json.loads((finished / "_summary.json").read_text())
    files = len(infer.resolve_inputs(str(list_file)))
    assert summary["files"] == files and summary["errors"] == len(BROKEN)
    assert summary["ok"] == files - len(BROKEN)
    assert summary["images_per_s"] >= 0 and summary["wall_s"] > 0
    assert list((finished / infer.TMP_DIR).iterdir()) == []


def test_rerunning_a_finished_job_does_nothing(finished, bundle, list_file, capsys):
    before = mtimes(finished)
    argv = ["infer", str(bundle), "--input", str(list_file), "--output", str(finished)]
    assert main([*argv, "--all-probabilities"]) == 0
    assert mtimes(finished) == before
    assert "this run: 0 processed" in capsys.readouterr().out


def test_other_inputs_into_the_same_folder_are_refused(finished, bundle, archive, capsys):
    argv = ["infer", str(bundle), "--input", str(archive), "--output", str(finished)]
    assert main([*argv, "--all-probabilities"]) == 2
    assert "another job (the input list differ" in capsys.readouterr().err


def test_a_job_stopped_midway_resumes_with_only_the_missing_chunks(
    ray_session, bundle, archive, tmp_path, monkeypatch
):
    commit = infer.commit_part

    def commit_once_then_crash(table, directory, chunk):
        if infer.finished_chunks(directory):
            raise KeyboardInterrupt  # as if Ctrl-C hit after the first commit
        commit(table, directory, chunk)

    out = tmp_path / "out"
    monkeypatch.setattr(infer, "commit_part", commit_once_then_crash)
    with pytest.raises(KeyboardInterrupt):
        infer.run_inference(bundle, str(archive), out, chunk_size=4, batch_size=4)
    first = mtimes(out)
    assert len(first) == 1

    monkeypatch.setattr(infer, "commit_part", commit)
    summary = infer.run_inference(bundle, str(archive), out, chunk_size=4, batch_size=4)
    files = len(image_files(archive))
    assert (summary["skipped"], summary["processed"]) == (4, files - 4)
    assert {name: mtimes(out)[name] for name in first} == first  # not written again
    rows = read_output(out)
    assert rows["path"].tolist() == image_files(archive)
    assert len(mtimes(out)) == -(-files // 4)


def test_a_crashed_model_actor_is_replaced_and_loses_no_rows(
    ray_session, bundle, archive, tmp_path, monkeypatch
):
    marker = tmp_path / "crashed"

    # Defined here, so Ray ships the class itself to the actor (not an import by name).
    class CrashOnce(infer.Predictor):
        """Dies in the middle of its first batch, once."""

        def __call__(self, batch):
            if not marker.exists():
                marker.touch()
                os._exit(1)
            return super().__call__(batch)

    monkeypatch.setattr(infer, "Predictor", CrashOnce)
    source = str(archive / "**" / "*.*")
    infer.run_inference(bundle, source, tmp_path / "out", batch_size=4)
    assert marker.exists()  # the actor did die mid-batch
    rows = read_output(tmp_path / "out")
    assert rows["path"].tolist() == infer.resolve_inputs(source)
    failed = set(rows.loc[rows["status"] == "error", "id"])
    assert failed == {*BROKEN} - {"missing"} | {"readme"}  # the glob matches readme.txt too
