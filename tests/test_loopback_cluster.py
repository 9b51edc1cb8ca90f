"""Smoke test of the loopback cluster harness: two nodes, token auth, S3, clean teardown.

Why: the multi-node tests built on tests/loopback_cluster.py are only as good as the
harness: a job must really span two nodes, reach S3 from every worker, run under token
auth, and teardown must stop all of it and nothing else (no `ray stop`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from loopback_cluster import BIN_DIR, LoopbackCluster, auth_rejected, pids_with_marker

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc"),
    pytest.mark.skipif(
        not (BIN_DIR / "ray").exists() or importlib.util.find_spec("aiohttp") is None,
        reason="`ray job submit` and the job server need ray[default] (the `cluster` extra)",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None,
        reason="the local S3 server needs moto[server] (the `dev` extra)",
    ),
]

# Runs as the job's driver: one task pinned to each node; each task writes one Parquet file
# to S3 through pyarrow's from_uri (the route Ray Data/Train/Tune take for s3:// paths).
JOB = textwrap.dedent(
    """
    import json, os, sys

    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq
    import ray

    ray.init()
    prefix = sys.argv[1]

    @ray.remote(num_cpus=1)
    def write_from_here(tag):
        ctx = ray.get_runtime_context()
        row = {
            "tag": tag,
            "node_id": ctx.get_node_id(),
            "pid": os.getpid(),
            "auth_mode": os.environ.get("RAY_AUTH_MODE"),
        }
        fs, path = pafs.FileSystem.from_uri(f"{prefix}/{tag}.parquet")
        pq.write_table(pa.Table.from_pylist([row]), path, filesystem=fs)
        return row

    rows = ray.get([
        write_from_here.options(resources={"node_a": 1}).remote("a"),
        write_from_here.options(resources={"node_b": 1}).remote("b"),
    ])
    driver = ray.get_runtime_context().get_node_id()
    print("RESULT " + json.dumps({"rows": rows, "driver_node": driver}), flush=True)
    """
)


def _token_file_digest() -> str | None:
    path = Path.home() / ".ray" / "auth_token"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def test_two_node_job_writes_to_s3_and_teardown_is_exact(tmp_path: Path) -> None:
    t0 = time.monotonic()
    home_token_before = _token_file_digest()
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "smoke_job.py").write_text(JOB)

    # Another Ray on this machine (as another test run would have): must survive our teardown.
    with LoopbackCluster(
        tmp_path / "bystander", worker_nodes=0, buckets=(), node_ips=["127.0.0.4"]
    ) as other:
        other_procs = other.scan()
        assert other_procs

        with LoopbackCluster(tmp_path / "main") as cluster:
            assert cluster.api("GET", "/api/authentication_mode", auth=False) == {
                "authentication_mode": "token"
            }
            assert auth_rejected(cluster) == 401
            prefix = cluster.s3_uri("poster-ray", "smoke")
            result = cluster.submit(
                ["python", "smoke_job.py", prefix],
                working_dir=job_dir,
            )
            assert result.status == "SUCCEEDED", f"{result.message}\n{result.logs}"
            assert result.cli_returncode == 0, result.cli_output

            line = next(x for x in result.logs.splitlines() if x.startswith("RESULT "))
            report = json.loads(line.removeprefix("RESULT "))
            by_tag = {row["tag"]: row for row in report["rows"]}
            assert by_tag["a"]["node_id"] != by_tag["b"]["node_id"]
            assert {row["auth_mode"] for row in report["rows"]} == {"token"}

            nodes = cluster.nodes()
            node_of = {
                next(k for k in n["resources_total"] if k.startswith("node_")): n for n in nodes
            }
            assert by_tag["a"]["node_id"] == node_of["node_a"]["node_id"]
            assert by_tag["b"]["node_id"] == node_of["node_b"]["node_id"]
            assert (
                node_of["node_a"]["is_head_node"]
                and report["driver_node"] == by_tag["a"]["node_id"]
            )

            s3 = cluster.s3_client()
            keys = {o["Key"] for o in s3.list_objects_v2(Bucket="poster-ray")["Contents"]}
            assert keys == {"smoke/a.parquet", "smoke/b.parquet"}
            for tag in ("a", "b"):
                body = s3.get_object(Bucket="poster-ray", Key=f"smoke/{tag}.parquet")["Body"]
                table = pq.read_table(io.BytesIO(body.read()))
                assert table.to_pylist()[0]["node_id"] == by_tag[tag]["node_id"]

            names = [r.name for r in cluster.processes]
            assert "gcs_server" in names and names.count("raylet") == 2
            root = cluster.root
            cluster_id = cluster.cluster_id

        assert cluster.leftovers == []
        alive = [r for r in cluster.processes if r.alive()]
        assert alive == [], f"still running after teardown: {alive}"
        assert pids_with_marker(cluster_id) == []
        assert root is not None and not root.exists()
        assert (tmp_path / "main" / "loopback-cluster-logs" / "ray-start-0.log").exists()

        # The other cluster: every process alive, its job server still answering.
        assert [r for r in other_procs if not r.alive()] == []
        assert other.api("GET", "/api/authentication_mode", auth=False)["authentication_mode"]

    assert [r for r in other.processes if r.alive()] == []
    # The token never went to ~/.ray: an existing file is unchanged (another Ray on this
    # machine may create one meanwhile, but never with our token).
    home_token_after = _token_file_digest()
    if home_token_before is not None:
        assert home_token_after == home_token_before
    elif home_token_after is not None:
        ours = hashlib.sha256(cluster.token.encode()).hexdigest()
        assert home_token_after != ours
    print(f"smoke test took {time.monotonic() - t0:.1f}s")
