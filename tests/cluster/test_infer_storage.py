"""Bulk inference on storage named by URIs: a bucket's posters in, the output folder on it.

The whole job runs through Ray on `file://` URIs (the same pyarrow code path as a bucket);
each piece that touches a bucket (listing inputs, reading posters, the output folder's
protocol) also runs against an S3 server in this process (moto, on loopback).
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from infer_support import BROKEN, SPEC, image_files, make_archive, make_bundle, read_output
from synthetic import make_poster

from poster_ray.errors import PosterRayError
from poster_ray.images import read_and_decode
from poster_ray.infer import run_inference
from poster_ray.infer.inputs import resolve_inputs
from poster_ray.infer.output import OutputFolder, job_record
from poster_ray.storage import Location


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """An S3 bucket on a moto server on 127.0.0.1; yields its s3:// URI."""
    boto3 = pytest.importorskip("boto3")
    server_module = pytest.importorskip("moto.server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    environment = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in environment.items():
            patch.setenv(key, value)
        name = f"posters-{uuid.uuid4().hex[:8]}"  # pyarrow filesystems are cached by bucket
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
        yield f"s3://{name}"
    server.stop()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


def test_a_bucket_prefix_glob_and_list_give_uris(bucket, tmp_path):
    for name in ("b.jpg", "a.JPEG", "sub/c.png", "notes.txt"):
        (Location(bucket) / "posters" / name).write_bytes(
            make_poster(tmp_path / "p.jpg").read_bytes()
        )
    prefix = f"{bucket}/posters"
    expected = [f"{prefix}/a.JPEG", f"{prefix}/b.jpg", f"{prefix}/sub/c.png"]
    assert resolve_inputs(f"{prefix}/") == expected
    assert resolve_inputs(f"{prefix}/*.jpg") == [f"{prefix}/b.jpg"]
    (Location(bucket) / "lists" / "in.txt").write_text(f"{prefix}/b.jpg\n{prefix}/b.jpg\n")
    assert resolve_inputs(f"{bucket}/lists/in.txt") == [f"{prefix}/b.jpg"]
    with pytest.raises(PosterRayError, match="no such folder, file or matching glob"):
        resolve_inputs(f"{bucket}/nothing-here")


def test_posters_on_a_bucket_decode_and_a_missing_one_is_an_error(bucket, tmp_path):
    uri = f"{bucket}/decode/poster.jpg"
    Location(uri).write_bytes(make_poster(tmp_path / "p.jpg", color=(200, 10, 10)).read_bytes())
    pixels, error = read_and_decode(uri, SPEC)
    assert error == "" and pixels.shape == SPEC.shape and pixels[..., 0].mean() > 150
    pixels, error = read_and_decode(f"{bucket}/decode/missing.jpg", SPEC)
    assert pixels is None and error.startswith("FileNotFoundError")


def test_the_output_folder_protocol_on_a_bucket(bucket):
    folder = OutputFolder(f"{bucket}/out")
    job = job_record("in", ["s3://x/a.jpg"], "b", "hash-1", 4, False)
    folder.claim(job)
    folder.commit_part(pa.table({"status": ["ok", "error"]}), 0)
    folder.commit_part(pa.table({"status": ["ok"]}), 1)
    assert folder.finished_chunks() == {0, 1}
    with pytest.raises(PosterRayError, match=r"another job \(the input list differ"):
        folder.claim({**job, "inputs_sha256": "other"})
    folder.claim(job)  # the same job again: its parts are kept
    assert sorted(folder.statuses(2).to_pylist()) == ["error", "ok", "ok"]
    part = pq.read_table(
        f"{folder.location.path}/part-000000.parquet", filesystem=folder.location.fs
    )
    assert part.column("status").to_pylist() == ["ok", "error"]


def test_a_job_on_file_uris_writes_uri_rows_and_resumes(ray_session, bundle, tmp_path):
    archive = make_archive(tmp_path / "archive")
    source, out = f"file://{archive}/", f"file://{tmp_path}/out"
    summary = run_inference(str(bundle), source, out, chunk_size=8, batch_size=4)
    rows = read_output(tmp_path / "out")
    assert rows["path"].tolist() == [f"file://{path}" for path in image_files(archive)]
    failed = set(rows.loc[rows["status"] == "error", "id"])
    assert failed == {*BROKEN} - {"missing"}
    assert summary["files"] == len(rows) and summary["output"] == out
    again = run_inference(str(bundle), source, out, chunk_size=8, batch_size=4)
    assert (again["processed"], again["skipped"]) == (0, len(rows))
