"""cluster.yaml: valid for Ray's cluster launcher, and within this project's rules.

Why: `ray up` only reports a bad config after it has created cloud resources, and a config
that validates can still open the dashboard to the internet, leak a credential or install
a Ray other than the one pinned. These checks run offline: Ray's own JSON schema (shipped
in the wheel) and the launcher's defaults merge, with every boto3 call made to fail.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from paths import REPO

CLUSTER_YAML = REPO / "cluster.yaml"


@pytest.fixture(scope="module")
def raw() -> str:
    return CLUSTER_YAML.read_text()


@pytest.fixture(scope="module")
def config(raw: str) -> dict[str, Any]:
    return yaml.safe_load(raw)


@pytest.fixture(scope="module")
def ray_pin() -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [m.group(1) for d in deps if (m := re.fullmatch(r"ray(?:\[[^\]]*\])?==(\S+)", d))]
    assert len(pins) == 1, deps
    return pins[0]


@pytest.fixture
def no_cloud(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any boto3 client/resource creation fails: validation must not reach AWS."""
    import boto3
    import boto3.session

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"cloud call attempted: {args} {kwargs}")

    for target in (boto3, boto3.session.Session):
        monkeypatch.setattr(target, "client", refuse)
        monkeypatch.setattr(target, "resource", refuse)


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _all_commands(config: dict[str, Any]) -> list[str]:
    keys = ("setup_commands", "head_setup_commands", "worker_setup_commands")
    keys += ("initialization_commands", "head_start_ray_commands", "worker_start_ray_commands")
    commands = [c for k in keys for c in config.get(k) or []]
    for node_type in config["available_node_types"].values():
        for k in ("worker_setup_commands", "initialization_commands"):
            commands += node_type.get(k) or []
    return commands


def _images(config: dict[str, Any]) -> list[str]:
    images = [v for k, v in (config.get("docker") or {}).items() if k.endswith("image")]
    for node_type in config["available_node_types"].values():
        images += [v for k, v in (node_type.get("docker") or {}).items() if k.endswith("image")]
    return images


def _worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    head = config["head_node_type"]
    return {k: v for k, v in config["available_node_types"].items() if k != head}


def test_matches_rays_shipped_schema(config: dict[str, Any], no_cloud: None) -> None:
    import jsonschema
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(config, json.loads(schema_path.read_text()))


def test_ray_launcher_accepts_it_after_merging_aws_defaults(
    config: dict[str, Any], no_cloud: None
) -> None:
    # Ray has no public offline validator; `ray up` runs these two before any cloud call.
    from ray.autoscaler._private.util import prepare_config, validate_config

    merged = prepare_config(copy.deepcopy(config))
    validate_config(merged)
    assert merged["provider"]["type"] == "aws"


def test_head_runs_no_training_work(config: dict[str, Any]) -> None:
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert head["resources"].get("GPU", 0) == 0
    assert "min_workers" not in head or head["min_workers"] == 0


def test_cpu_and_gpu_worker_types_autoscale_from_zero(config: dict[str, Any]) -> None:
    workers = _worker_types(config)
    gpu = [t for t in workers.values() if t["resources"].get("GPU", 0) >= 1]
    cpu = [t for t in workers.values() if t["resources"].get("GPU", 0) == 0]
    assert gpu and cpu
    assert all(t["resources"].get("CPU", 0) >= 1 for t in workers.values())
    for node_type in workers.values():
        assert node_type["min_workers"] == 0
        assert node_type["max_workers"] >= 1
    assert sum(t["max_workers"] for t in workers.values()) <= config["max_workers"]
    assert config["idle_timeout_minutes"] > 0


def test_repo_sync_skips_local_state(config: dict[str, Any]) -> None:
    assert "." in config["file_mounts"].values()
    excluded = set(config["rsync_exclude"])
    assert {".venv", "runs", "data", ".git"} <= excluded
    assert ".gitignore" in config["rsync_filter"]


def test_no_credentials_in_file(raw: str) -> None:
    patterns = [
        r"(?i)aws_access_key_id",
        r"(?i)aws_secret_access_key",
        r"(?i)aws_session_token",
        r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # access key IDs
        r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])",  # secret-key shaped
        r"RAY_AUTH_TOKEN=",  # the token travels as ~/.ray/auth_token, never inline
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    ]
    for pattern in patterns:
        assert not re.search(pattern, raw), pattern


def test_nothing_opens_cluster_ports_to_the_internet(config: dict[str, Any]) -> None:
    for node in _walk(config):
        if isinstance(node, dict):
            assert node.get("CidrIp") != "0.0.0.0/0"
            assert node.get("CidrIpv6") != "::/0"
    for command in config["head_start_ray_commands"]:
        assert "--dashboard-host=0.0.0.0" not in command
        assert "--dashboard-host=::" not in command
    for image_options in _walk(config.get("docker") or {}):
        if isinstance(image_options, str):
            assert not re.search(r"(^|\s)(-p|--publish)\b", image_options), image_options


def test_token_auth_on_every_node(config: dict[str, Any], raw: str) -> None:
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2
    for command in ray_starts:
        before_start = command.split("ray start")[0]
        assert re.search(r"\bRAY_AUTH_MODE=token\b", before_start), command
    assert "RAY_AUTH_MODE=disabled" not in raw
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


def test_nodes_share_s3_storage_through_instance_profiles(config: dict[str, Any]) -> None:
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in command:
            assert re.search(r"\bPOSTER_RAY_STORAGE=s3://\S+", command), command
    for node_type in config["available_node_types"].values():
        arn = node_type["node_config"]["IamInstanceProfile"]["Arn"]
        assert re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/[\w+=,.@/-]+", arn), arn


def test_ray_and_python_pins_match_pyproject(config: dict[str, Any], ray_pin: str) -> None:
    images = _images(config)
    assert images
    for image in images:
        assert image.startswith(f"rayproject/ray:{ray_pin}-py311"), image
    commands = _all_commands(config)
    installs = " ".join(c for c in commands if "pip install" in c)
    assert "poster-ray[cluster]" in installs
    for version in re.findall(r"\bray(?:\[[^\]]*\])?==([\w.]+)", installs):
        assert version == ray_pin
    checks = [c for c in commands if "ray.__version__" in c]
    assert checks and all(f"'{ray_pin}'" in c and "(3, 11)" in c for c in checks)


def test_the_readmes_job_submit_passes_every_process_variable():
    """`ray job submit` in the README hands the job what every process needs: the same
    variables as `runtime.PROCESS_ENV`, with the same values."""
    from poster_ray.runtime import PROCESS_ENV

    readme = (REPO / "README.md").read_text()
    (given,) = re.findall(r"--runtime-env-json '(\{.*?\})' \\", readme, flags=re.DOTALL)
    assert json.loads(given)["env_vars"] == PROCESS_ENV
