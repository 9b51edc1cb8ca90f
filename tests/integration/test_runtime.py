"""Process set-up: importing the package changes nothing, Ray's start sets what the
driver and the workers need, and TensorFlow's quiet start-up never hides a failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from paths import REPO

from poster_ray import runtime
from poster_ray.errors import PosterRayError
from poster_ray.quiet_tensorflow import START_UP_NOISE, start_up_noise_dropped
from poster_ray.resources import prepare_tensorflow_gpus
from poster_ray.storage import absolute

# What a broken CUDA install prints and raises while TensorFlow loads.
FAKE_LIBRARY_LINE = "E0000 fake_dso_loader.cc:42] Could not load libcudart.so.12: no such file"
FAKE_IMPORT_ERROR = "libcudart.so.12: cannot open shared object file (fake tensorflow)"


def python(code: str, **env: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter of this venv, this checkout first on its path."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run(
        [sys.executable, "-c", code],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_importing_poster_ray_changes_nothing_in_the_process():
    result = python(
        "import logging, os, sys; e = dict(os.environ); m = list(sys.meta_path); "
        "loggers = dict(logging.root.manager.loggerDict); import poster_ray; "
        "assert dict(os.environ) == e and sys.meta_path == m, 'changed'; "
        "assert logging.root.manager.loggerDict == loggers, 'logger'"
    )
    assert result.returncode == 0, result.stderr


def test_start_up_noise_is_dropped_and_everything_else_kept(capfd):
    noise = b"".join(b"I0000 12:00:00 x.cc:1" + line + b"\n" for line in START_UP_NOISE)
    with start_up_noise_dropped():
        os.write(2, noise + FAKE_LIBRARY_LINE.encode() + b"\n" + noise)
    assert capfd.readouterr().err == FAKE_LIBRARY_LINE + "\n"


def test_what_a_failing_import_writes_reaches_the_console(capfd):
    with pytest.raises(ImportError, match="libcudart"), start_up_noise_dropped():
        os.write(2, FAKE_LIBRARY_LINE.encode() + b"\n")
        raise ImportError(FAKE_IMPORT_ERROR)
    assert FAKE_LIBRARY_LINE in capfd.readouterr().err


def test_the_driver_gets_tf_keras_and_a_quiet_tensorflow():
    """TF_USE_LEGACY_KERAS set by tf_import before TensorFlow loads; none of its start-up
    noise on the console (whatever else this machine's TensorFlow prints stays)."""
    result = python(
        "import os; os.environ.pop('TF_USE_LEGACY_KERAS', None); "
        "os.environ.pop('TF_CPP_MIN_LOG_LEVEL', None); "
        "from poster_ray.tf_import import tf, keras; import tf_keras; "
        "assert tf.keras.Model is tf_keras.Model, tf.keras; "
        "tf.config.list_physical_devices('GPU'); print(int(tf.reduce_sum(tf.constant([1, 2]))))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3"
    assert not [line for line in START_UP_NOISE if line.decode() in result.stderr], result.stderr


# ---------------------------------------------------------------- Ray's start


def test_workers_get_only_what_a_submitted_job_lacks(monkeypatch):
    submitted = {"env_vars": {"TF_USE_LEGACY_KERAS": "1"}, "worker_process_setup_hook": "x.y"}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": submitted}))
    extra = runtime.worker_runtime_env(progress_bars=False)
    assert "worker_process_setup_hook" not in extra
    assert "TF_USE_LEGACY_KERAS" not in extra["env_vars"]
    assert extra["env_vars"]["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] == "1"
    assert extra["env_vars"]["RAY_DATA_DISABLE_PROGRESS_BARS"] == "1"


def test_workers_get_the_drivers_value_of_a_setting(monkeypatch):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # a user debugging TensorFlow
    extra = runtime.worker_runtime_env()
    assert extra["env_vars"]["TF_CPP_MIN_LOG_LEVEL"] == "0"
    assert extra["env_vars"]["PYTHONWARNINGS"] == "ignore::DeprecationWarning"
    assert extra["worker_process_setup_hook"] == runtime.WORKER_SETUP_HOOK


def test_a_relative_path_in_a_submitted_job_needs_a_storage_base(monkeypatch):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {}}))
    monkeypatch.delenv("POSTER_RAY_STORAGE", raising=False)
    with pytest.raises(PosterRayError, match="temporary copy"):
        absolute("runs/x")
    monkeypatch.setenv("POSTER_RAY_STORAGE", "s3://bucket/base")
    assert absolute("runs/x") == "s3://bucket/base/runs/x"


# ---------------------------------------------------------------- GPUs


class FakeTfConfig:
    """tf.config's two calls prepare_tensorflow_gpus makes, with `gpus` devices."""

    def __init__(self, gpus: int) -> None:
        self.devices = [f"/physical_device:GPU:{index}" for index in range(gpus)]
        self.growing: list[str] = []
        self.experimental = SimpleNamespace(set_memory_growth=self.set_memory_growth)

    def list_physical_devices(self, kind: str) -> list[str]:
        return self.devices if kind == "GPU" else []

    def set_memory_growth(self, device: str, enabled: bool) -> None:
        assert enabled
        self.growing.append(device)


def test_every_visible_gpu_grows_its_memory_as_needed():
    config = FakeTfConfig(gpus=2)
    assert prepare_tensorflow_gpus(config, reserved=2) == 2
    assert config.growing == config.devices


def test_a_cpu_process_sees_no_gpu_and_sets_nothing():
    config = FakeTfConfig(gpus=0)
    assert prepare_tensorflow_gpus(config, reserved=0) == 0
    assert config.growing == []


def test_a_reserved_gpu_that_tensorflow_cannot_see_is_an_error():
    with pytest.raises(PosterRayError, match="reserved 1 GPU.*TF_CPP_MIN_LOG_LEVEL=0"):
        prepare_tensorflow_gpus(FakeTfConfig(gpus=0), reserved=1)


# ---------------------------------------------------------------- a fresh Ray

FRESH_RAY = """
import json, os, sys, time
import ray
from poster_ray.runtime import init_ray

init_ray(num_cpus=1, dashboard=False, progress_bars=False)

@ray.remote(num_cpus=0.1)
def visible_devices():
    return os.environ.get("CUDA_VISIBLE_DEVICES")

@ray.remote(num_cpus=0.1)
def start_tensorflow(via_poster_ray):
    if via_poster_ray:
        from poster_ray.tf_import import tf
    else:
        import tensorflow as tf  # as Ray Train does, before our code runs
    return tf.__version__

fake_tf = {"env_vars": {"PYTHONPATH": sys.argv[1] + os.pathsep + os.environ["PYTHONPATH"]}}
old_rule = {"env_vars": {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}}
errors = []
for via_poster_ray in (True, False):
    try:
        ray.get(start_tensorflow.options(runtime_env=fake_tf).remote(via_poster_ray))
    except Exception as error:
        errors.append(str(error))
report = {
    "no_gpu": ray.get(visible_devices.remote()),
    "one_gpu": ray.get(visible_devices.options(num_gpus=1).remote()),
    "no_gpu_ray_default": ray.get(visible_devices.options(runtime_env=old_rule).remote()),
    "errors": errors,
}
print("REPORT " + json.dumps(report), flush=True)
time.sleep(5)  # the log monitor forwards the workers' lines to this console
ray.shutdown()
"""


@pytest.fixture(scope="module")
def fresh_ray(tmp_path_factory) -> tuple[dict, str]:
    """A local Ray started by init_ray on a machine with one (pretended) GPU, where
    `import tensorflow` fails in a worker as a broken CUDA install makes it fail."""
    fake = tmp_path_factory.mktemp("fake_tf")
    (fake / "tensorflow").mkdir()
    (fake / "tensorflow" / "__init__.py").write_text(
        f"import os\nos.write(2, {(FAKE_LIBRARY_LINE + chr(10)).encode()!r})\n"
        f"raise ImportError({FAKE_IMPORT_ERROR!r})\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "CUDA_VISIBLE_DEVICES"}
    env.update(PYTHONPATH=str(REPO), RAY_OVERRIDE_RESOURCES=json.dumps({"GPU": 1}))
    result = subprocess.run(
        [sys.executable, "-c", FRESH_RAY, str(fake)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("REPORT "))
    return json.loads(line.removeprefix("REPORT ")), result.stdout + result.stderr


def test_a_task_without_a_gpu_sees_none_and_one_with_a_gpu_sees_it(fresh_ray):
    report, _ = fresh_ray
    assert report["no_gpu"] == ""
    assert report["one_gpu"] == "0"
    assert report["no_gpu_ray_default"] is None  # Ray 2.60's own rule, which we override


def test_a_tensorflow_import_failure_in_a_worker_reaches_the_user(fresh_ray):
    report, console = fresh_ray
    assert len(report["errors"]) == 2
    assert all(FAKE_IMPORT_ERROR in error for error in report["errors"])
    assert console.count(FAKE_LIBRARY_LINE) == 2, console[-3000:]


ANOTHER_RAY = """
import sys, ray
ray.init(num_cpus=0, include_dashboard=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the test closes it
ray.shutdown()
"""


@pytest.fixture
def another_local_ray():
    """A second local Ray on this machine, as another poster-ray run would start: the
    driver of a subprocess, which shuts its Ray down when the test closes its stdin."""
    process = subprocess.Popen(
        [sys.executable, "-c", ANOTHER_RAY],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield process.stdout.readline().strip()
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()


def test_workers_query_their_own_cluster_when_another_ray_runs(ray_session, another_local_ray):
    """Ray Train's cleaner actor queries the state API: with two local Rays, it failed to
    tell which one is its own."""
    import ray
    from ray.util.state import list_nodes

    @ray.remote(num_cpus=0)
    def state_api_answer() -> tuple[str, list[str]]:
        return os.environ["RAY_ADDRESS"], [node.node_id for node in list_nodes()]

    address, nodes = ray.get(state_api_answer.remote())
    assert address == ray.get_runtime_context().gcs_address != another_local_ray
    assert nodes == [ray.get_runtime_context().get_node_id()]


def test_the_driver_and_every_worker_read_parquet_with_the_first_datasource(ray_session):
    """Ray Data's second Parquet datasource starts actors for every read (seconds for a
    cache split; bench/parquet_reads.py): the driver's context and the fresh one of a
    worker (a Train worker, a Tune trial) both use the first."""
    import ray

    @ray.remote(num_cpus=0)
    def worker_uses_v2() -> bool:
        return ray.data.DataContext.get_current().use_datasource_v2

    assert ray.data.DataContext.get_current().use_datasource_v2 is False
    assert ray.get(worker_uses_v2.remote()) is False
