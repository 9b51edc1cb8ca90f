"""Bulk inference: one row per input whatever the file, resume, idempotence, crashed actors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from infer_support import (
    BROKEN,
    GENRES,
    image_files,
    make_archive,
    make_bundle,
    mtimes,
    read_output,
)

from poster_ray.bundle import load_bundle
from poster_ray.cli import main
from poster_ray.errors import PosterRayError
from poster_ray.images import read_and_decode
from poster_ray.infer import output, pipeline, run_inference
from poster_ray.infer.inputs import chunk_bounds, resolve_inputs
from poster_ray.infer.output import OutputFolder, job_record
from poster_ray.infer.rows import file_id, output_schema, rows_table


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return make_archive(tmp_path_factory.mktemp("archive"))


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
    assert main([*argv, "--all-probabilities", "--batch-size", "4", "--precision", "float32"]) == 0
    return out


# ---------------------------------------------------------------- inputs, no Ray


def test_a_folder_gives_its_images_recursively_in_any_case(archive):
    paths = resolve_inputs(str(archive))
    assert paths == image_files(archive)
    assert str(archive / "sub dir" / "UPPER CASE.JPEG") in paths
    assert str(archive / "readme.txt") not in paths


def test_a_glob_gives_what_it_matches(archive):
    assert resolve_inputs(str(archive / "tt*.jpg")) == [
        str(archive / f"tt{i:07d}.jpg") for i in range(8)
    ]
    assert resolve_inputs(str(archive / "**" / "*.JPEG")) == [
        str(archive / "sub dir" / "UPPER CASE.JPEG")
    ]


def test_a_list_file_keeps_missing_paths_and_drops_repeats(archive, list_file):
    assert resolve_inputs(str(list_file)) == sorted(
        [*image_files(archive), str(archive / "missing.jpg")]
    )


def test_relative_paths_resolve_against_the_working_directory(archive, tmp_path, monkeypatch):
    monkeypatch.chdir(archive)
    (tmp_path / "relative.txt").write_text("tt0000001.jpg\nsub dir/UPPER CASE.JPEG\n")
    assert resolve_inputs(str(tmp_path / "relative.txt")) == [
        str(archive / "sub dir" / "UPPER CASE.JPEG"),
        str(archive / "tt0000001.jpg"),
    ]


def test_a_parquet_file_gives_its_path_column(archive, tmp_path):
    paths = image_files(archive)[:3]
    pq.write_table(pa.table({"path": paths, "other": [1, 2, 3]}), tmp_path / "in.parquet")
    assert resolve_inputs(str(tmp_path / "in.parquet")) == paths


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
        resolve_inputs(str(make_input(tmp_path)))


def write_parquet(path: Path, columns: dict) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_chunks_are_fixed_slices_of_the_sorted_list():
    assert chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_bounds(8, 4) == [(0, 4), (4, 8)]


# ---------------------------------------------------------------- rows, no Ray


def test_rows_of_ok_and_failed_files():
    probabilities = np.array(
        [[0.1, 0.9, 0.3, 0.6, 0.2], [0.7, 0.7, 0.1, 0.1, 0.1], [0.0] * 5], dtype=np.float32
    )
    table = rows_table(
        np.array(["/p/a b.jpg", "s3://bucket/p/tie.jpeg", "/p/x.png"], dtype=object),
        np.array(["", "", "ValueError: empty file"], dtype=object),
        probabilities,
        GENRES,
        np.array([0.0, 1.0, 0.5, 0.5, 0.5]),
        "h",
        all_probabilities=True,
    )
    assert table.schema.equals(output_schema(len(GENRES), all_probabilities=True))
    ok, tie, failed = table.to_pylist()
    assert [ok[f"top{k}_genre"] for k in (1, 2, 3)] == ["Comedy", "Horror", "Drama"]
    assert ok["top1_prob"] == pytest.approx(0.9)
    assert ok["above_threshold"] == ["Horror", "Action"]  # Comedy misses its 1.0 threshold
    assert (ok["status"], ok["error"], ok["bundle_hash"], ok["id"]) == ("ok", "", "h", "a b")
    assert ok["probabilities"] == pytest.approx(probabilities[0].tolist())
    assert [tie["top1_genre"], tie["top2_genre"]] == ["Action", "Comedy"]  # ties: genre order
    assert (tie["path"], tie["id"]) == ("s3://bucket/p/tie.jpeg", "tie")
    assert failed["status"] == "error" and failed["error"] == "ValueError: empty file"
    assert failed["top1_genre"] is None and failed["top1_prob"] is None
    assert failed["above_threshold"] == [] and failed["probabilities"] is None


def test_ids_are_file_names_without_their_extension():
    assert [
        file_id(path) for path in ["/a/b.c.jpg", "s3://b/x/y.png", "/a/noext", "/a/.hidden"]
    ] == [
        "b.c",
        "y",
        "noext",
        ".hidden",
    ]


# ---------------------------------------------------------------- the output folder, no Ray


def test_a_failed_commit_leaves_no_part_file(tmp_path, monkeypatch):
    folder = OutputFolder(tmp_path)

    def write_half_then_crash(table, where):
        where.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(output.pq, "write_table", write_half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        folder.commit_part(pa.table({"path": ["a"]}), 0)
    monkeypatch.undo()

    def no_rename(source, target):
        raise OSError("rename failed")

    monkeypatch.setattr("poster_ray.storage.os.replace", no_rename)
    with pytest.raises(OSError, match="rename failed"):
        folder.commit_part(pa.table({"path": ["a"]}), 0)
    assert folder.finished_chunks() == set()
    assert os.listdir(tmp_path) == []


def test_what_a_killed_commit_left_is_removed_and_never_counted(tmp_path):
    folder = OutputFolder(tmp_path)
    job = job_record("in", ["/a.jpg"], "b", "hash-1", 4, False)
    folder.claim(job)
    (tmp_path / ".part-000001.parquet.4f2a.tmp").write_bytes(b"PAR1 half")
    assert folder.finished_chunks() == set()
    folder.claim(job)  # the rerun
    assert sorted(os.listdir(tmp_path)) == ["_job.json"]


def test_another_bundle_into_the_same_folder_is_refused(tmp_path):
    folder = OutputFolder(tmp_path)
    job = job_record("in", ["/a.jpg"], "b", "hash-1", 4, False)
    folder.claim(job)
    folder.claim(job)  # the same job again: fine
    with pytest.raises(PosterRayError, match=r"another job \(the bundle differ"):
        folder.claim({**job, "bundle_hash": "hash-2"})


def test_another_number_of_views_is_refused_and_a_record_before_views_read_as_one(tmp_path):
    folder = OutputFolder(tmp_path)
    job = job_record("in", ["/a.jpg"], "b", "hash-1", 4, False)
    (tmp_path / "_job.json").write_text(json.dumps({k: v for k, v in job.items() if k != "views"}))
    folder.claim(job)
    with pytest.raises(PosterRayError, match=r"another job \(--views differ"):
        folder.claim({**job, "views": 2})


def test_parts_without_a_job_record_are_refused(tmp_path):
    (tmp_path / "part-000000.parquet").write_bytes(b"PAR1")
    with pytest.raises(PosterRayError, match="not a poster-ray infer output"):
        OutputFolder(tmp_path).claim(job_record("in", ["/a.jpg"], "b", "h", 4, False))


# ---------------------------------------------------------------- the job, on Ray


def test_one_row_per_input_with_the_right_status(finished, archive, list_file):
    rows = read_output(finished)
    expected = resolve_inputs(str(list_file))
    assert rows["path"].tolist() == expected  # sorted, no repeats, nothing lost
    failed = rows[rows["status"] == "error"]
    assert dict(zip(failed["id"], failed["error"].str.split(":").str[0], strict=True)) == BROKEN
    ok = rows[rows["status"] == "ok"]
    assert len(ok) == len(expected) - len(BROKEN)
    assert (ok["error"] == "").all() and ok["top1_genre"].isin(GENRES).all()
    assert "affiche d'été – 東京" in set(ok["id"])


def test_the_schema_and_the_probabilities(finished, bundle):
    table = pq.read_table(finished / "part-000000.parquet")
    assert table.schema.equals(output_schema(len(GENRES), all_probabilities=True))
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
    files = len(resolve_inputs(str(list_file)))
    assert summary["files"] == files and summary["errors"] == len(BROKEN)
    assert summary["ok"] == files - len(BROKEN)
    assert summary["images_per_s"] > 0 and summary["wall_s"] > 0
    assert summary["precision"] == {"requested": "float32", "rows": {"float32": files}}
    assert summary["progress"]["files_done"] == summary["progress"]["files_total"] == files
    assert summary["progress"]["errors"] == len(BROKEN) and summary["progress"]["eta_s"] == 0
    assert sorted(path.name for path in finished.iterdir() if path.name.startswith(".")) == []


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
    commit = OutputFolder.commit_part

    def commit_once_then_crash(self, table, chunk):
        if self.finished_chunks():
            raise KeyboardInterrupt  # as if Ctrl-C hit after the first commit
        commit(self, table, chunk)

    out = tmp_path / "out"
    monkeypatch.setattr(OutputFolder, "commit_part", commit_once_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run_inference(bundle, str(archive), out, chunk_size=4, batch_size=4)
    first = mtimes(out)
    assert len(first) == 1

    monkeypatch.setattr(OutputFolder, "commit_part", commit)
    summary = run_inference(bundle, str(archive), out, chunk_size=4, batch_size=4)
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
    class CrashOnce(pipeline.ModelActor):
        """Dies in the middle of its first batch, once."""

        def __call__(self, batch):
            if not marker.exists():
                marker.touch()
                os._exit(1)
            return super().__call__(batch)

    monkeypatch.setattr(pipeline, "ModelActor", CrashOnce)
    source = str(archive / "**" / "*.*")
    run_inference(bundle, source, tmp_path / "out", batch_size=4)
    assert marker.exists()  # the actor did die mid-batch
    rows = read_output(tmp_path / "out")
    assert rows["path"].tolist() == resolve_inputs(source)
    failed = set(rows.loc[rows["status"] == "error", "id"])
    assert failed == {*BROKEN} - {"missing"} | {"readme"}  # the glob matches readme.txt too


def test_views_average_the_model_over_each_poster_and_its_mirror_image(bundle, archive, tmp_path):
    out = tmp_path / "views"
    argv = ["infer", str(bundle), "--input", str(archive), "--output", str(out)]
    assert main([*argv, "--views", "2", "--all-probabilities", "--precision", "float32"]) == 0
    rows = read_output(out)
    ok = rows[rows["status"] == "ok"]
    loaded = load_bundle(bundle)
    images = np.stack([read_and_decode(path, loaded.spec)[0] for path in ok["path"]])
    alone = loaded.model.predict(images, verbose=0)
    mirrored = loaded.model.predict(images[:, :, ::-1], verbose=0)
    np.testing.assert_allclose(
        np.stack(ok["probabilities"].to_numpy()), (alone + mirrored) / 2, atol=1e-4
    )
    assert json.loads((out / "_job.json").read_text())["views"] == 2


def test_a_standalone_job_starts_its_own_ray_and_completes(bundle, list_file, tmp_path):
    """`poster-ray infer` in a fresh process, as an overnight job runs it: Ray is started
    by the job itself (every other test shares the suite's Ray; this one starts the
    dashboard in Ray's minimal mode), and the job completes."""
    import subprocess
    import sys

    out = tmp_path / "out"
    script = (
        "import sys, ray\n"
        "from poster_ray.cli import main\n"
        "from poster_ray.runtime import ray_logs_dir\n"
        "code = main(sys.argv[1:])\n"
        "print('LOGS', ray_logs_dir())\n"
        "sys.exit(code)\n"
    )
    argv = ["infer", str(bundle), "--input", str(list_file), "--output", str(out)]
    finished = subprocess.run(
        [sys.executable, "-c", script, *argv, "--num-cpus", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-2000:]
    logs = Path(finished.stdout.split("LOGS ", 1)[1].split()[0])
    assert logs.is_dir()  # the job started a Ray session of its own
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["files"] == summary["processed"] == len(resolve_inputs(str(list_file)))
