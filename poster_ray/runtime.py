"""Process set-up, in one place: where Ray starts.

`import poster_ray` changes nothing in a process. Every entry point (the CLI, `jobs/`,
the pipeline, bulk inference, the benchmarks, the tests) starts or joins Ray through
`init_ray`, which sets what the driver needs and hands every worker the same through
the job's runtime_env: environment variables, Ray's log level, the progress-bar policy,
GPU visibility and TensorFlow's quiet start-up.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TypeVar

import ray

from poster_ray.data.context import data_context
from poster_ray.errors import RunFailure, Terminated
from poster_ray.quiet_tensorflow import TENSORFLOW_ENV, install_filtered_tensorflow_import
from poster_ray.reaper import MARK_VAR, mark

# Ray Data's switch of its Parquet reader, read when ray.data is imported; the driver's
# own context is set in init_ray, since ray.data may be imported before it runs.
USE_DATASOURCE_V2_ENV_VAR = "RAY_DATA_USE_DATASOURCE_V2"
# What the driver and every Ray worker need in their environment. The driver keeps a
# value the user set; workers get the driver's value, so exporting one (say
# TF_CPP_MIN_LOG_LEVEL=0 to debug) reaches them too. The README's `ray job submit`
# command passes these as the job's env_vars.
PROCESS_ENV = {
    **TENSORFLOW_ENV,
    # Ray Data's per-dataset INFO lines (plans, "execution finished") from every process;
    # its progress bars are not logging and stay.
    "RAY_DATA_LOG_LEVEL": "WARNING",
    # Ray Train re-routes workers' print() through its logger, which printed each of
    # our epoch lines twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # Tune's new output engine prints its tables even when asked to be silent.
    "RAY_AIR_NEW_OUTPUT": "0",
    # Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for a task or actor that reserves no GPU
    # (ray#54868), so a CPU-only TensorFlow process would see, and by default fill, every
    # GPU of its node. This restores "no GPU reserved: none visible". Read by each worker.
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1",
    # Parquet through Ray Data's first datasource: its second (the 2.60 default) starts
    # footer-reader actors for every read, 2-4 s for a cache split of a few files on 2
    # cores, 0.2 s this way (bench/parquet_reads.py); every training run reads two.
    USE_DATASOURCE_V2_ENV_VAR: "0",
    # How often a Ray Train controller polls its workers (Ray's default 2 s): it notices
    # that a run's workers started, and that they finished, up to one interval late.
    # A run that only reports once: 9.8-9.9 s at 2 s, 6.7 s at 0.5 s (bench/train_start_up.py).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}
# What workers alone get. Deprecation notices from inside Ray and TensorFlow, which users
# cannot act on, printed once per worker process; the driver's own warnings are the
# importing program's business and stay as it set them.
WORKER_ONLY_ENV = {"PYTHONWARNINGS": "ignore::DeprecationWarning"}
# What a local Ray alone gets, in the driver and every worker (the driver keeps a value
# the user set). Ray Train's preemption watcher, an actor per training run, polls Ray for
# nodes being drained, which a single machine never is: one process start (about 4 s of
# CPU here) and one logged core_worker error line fewer per run. Clusters keep it.
LOCAL_RAY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
# Ray Data's switch of its progress bars in processes that build a DataContext afresh
# (Tune trials, Train workers); the driver's own is set on its context.
PROGRESS_BARS_ENV_VAR = "RAY_DATA_DISABLE_PROGRESS_BARS"
# Run in every worker process before anything else.
WORKER_SETUP_HOOK = "poster_ray.runtime.set_up_worker_process"
# Ray's switch for single-machine Ray (its default on macOS and Windows): the node's
# address is the loopback one, so the GCS, raylet, workers and agents listen on
# 127.0.0.1 only. Set for a local Ray alone; a cluster keeps its configured address.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
T = TypeVar("T")
# The reaper started beside a local Ray, kept for the life of the process: its stdin
# pipe is the driver's heartbeat.
_REAPERS: list[subprocess.Popen] = []


def init_ray(
    num_cpus: int | None = None, dashboard: bool = True, progress_bars: bool = True
) -> None:
    """Attach to the cluster a job runs in (RAY_ADDRESS), else start a local Ray.

    Idempotent, so a CLI command can call it and tests can start Ray first with a small
    CPU count and no progress bars. Ray's own logs stay at WARNING on the console (the
    rest is in `ray_logs_dir()`). `dashboard=False` starts a local Ray with its dashboard
    in the minimal mode (no web UI, none of its module processes): less start-up and
    CPU, for work that needs neither (Ray Train's cleanup uses the full dashboard's
    state API).
    """
    if ray.is_initialized():
        return
    for key, value in PROCESS_ENV.items():
        os.environ.setdefault(key, value)  # before ray.init: a local raylet inherits them
    # Ray Data read RAY_DATA_LOG_LEVEL when it was imported, maybe before this ran.
    logging.getLogger("ray.data").setLevel(os.environ["RAY_DATA_LOG_LEVEL"])
    hide_progress_bars_off_notice()
    local = starts_local_ray()
    if local:
        for key, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(key, value)
        start_reaper()  # before ray.init: a start-up that fails leaves nothing either
    try:
        with loopback_only(local):
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=dashboard,
                runtime_env=worker_runtime_env(progress_bars),
                log_to_driver=True,
                logging_config=ray.LoggingConfig(encoding="TEXT", log_level="WARNING"),
            )
    except Exception as error:  # Ray raises a bare Exception when its node times out
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise RunFailure(f"Ray did not start: {reason} The same command retries.") from None
    stop_on_sigterm()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress_bars
    context.use_datasource_v2 = os.environ[USE_DATASOURCE_V2_ENV_VAR] == "1"


def starts_local_ray() -> bool:
    """Whether `ray.init` here starts a Ray of its own: no cluster address, not a job."""
    return "RAY_ADDRESS" not in os.environ and submitted_job_runtime_env() is None


@contextmanager
def loopback_only(local: bool) -> Iterator[None]:
    """While a local Ray starts (`local`), its node address is 127.0.0.1 (LOOPBACK_ENV),
    for the driver and every process Ray starts; restored afterwards, so a later
    `ray start` or a connection to a real cluster from this process is unaffected.

    Ray reads the switch when it is imported, maybe before this ran, so its constant is
    set too (ray/_private/ray_constants.py, read by `services.get_node_ip_address` only):
    Ray has no public setting for it, and `ray.init` rewrites
    `_node_ip_address="127.0.0.1"` to the machine's outward address."""
    if not local:
        yield
        return
    from ray._private import ray_constants

    saved_env = {key: os.environ.get(key) for key in LOOPBACK_ENV}
    saved_switch = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(LOOPBACK_ENV)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_switch
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_reaper() -> None:
    """Start `poster_ray.reaper` to end this driver's processes when it ends (Linux), and
    mark what this driver starts from now on (its Ray) with `reaper.MARK_VAR`."""
    if not sys.platform.startswith("linux"):
        return
    driver_mark = mark(os.getpid())
    os.environ[MARK_VAR] = driver_mark
    # The pipe's far end is this process's alone (not inherited): it closes when we end.
    reaper = subprocess.Popen(
        [sys.executable, "-m", "poster_ray.reaper", str(os.getpid()), driver_mark],
        stdin=subprocess.PIPE,
        start_new_session=True,  # not in the terminal's group: Ctrl-C leaves it to clean up
    )
    _REAPERS.append(reaper)


def stop_on_sigterm() -> None:
    """SIGTERM stops the driver as Ctrl-C does (`errors.Terminated`), with one line.

    Ray's core worker installs a failure-signal handler for SIGTERM when `ray.init`
    connects (it aborted the driver with a C++ stack dump, exit 134); setting Python's
    own handler after `ray.init` replaces it. Only the main thread may set handlers."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_terminated)


def raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def interruptible(call: Callable[[], T]) -> T:
    """`call()` in a helper thread, so that Ctrl-C (or SIGTERM) stops the driver at once.

    On the main thread, Ray Train's fit installs its own SIGINT handler, which aborts the
    run and then calls sys.exit(0) (exit status 1, no message); off it, Ray Train leaves
    the handler alone, as it does inside Tune. The driver then stops with the checkpoint
    of every finished epoch saved, and ending the driver ends the run's processes."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["result"] = call()
        except BaseException as error:  # handed to the main thread as it is
            outcome["error"] = error

    thread = threading.Thread(target=target, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def worker_env(progress_bars: bool = True) -> dict[str, str]:
    """Every worker's environment variables: PROCESS_ENV as the driver holds it, the
    local Ray's where it set them, the workers' own, and the progress-bar policy."""
    return {
        **{key: os.environ.get(key, value) for key, value in PROCESS_ENV.items()},
        **{key: os.environ[key] for key in LOCAL_RAY_ENV if key in os.environ},
        **WORKER_ONLY_ENV,
        PROGRESS_BARS_ENV_VAR: "0" if progress_bars else "1",
    }


def worker_runtime_env(progress_bars: bool = True) -> dict:
    """What every worker needs that the job's own runtime_env does not already give.

    Ray refuses a driver runtime_env that repeats a field or variable of the one a job
    was submitted with (`ray job submit --runtime-env-json`), so only the rest is added.
    """
    given = submitted_job_runtime_env() or {}
    given_env = given.get("env_vars") or {}
    env_vars = {
        key: value for key, value in worker_env(progress_bars).items() if key not in given_env
    }
    extra: dict = {"env_vars": env_vars} if env_vars else {}
    if "worker_process_setup_hook" not in given:
        extra["worker_process_setup_hook"] = WORKER_SETUP_HOOK
    return extra


def submitted_job_runtime_env() -> dict | None:
    """The runtime_env this driver's job was submitted with (`ray job submit`), or None
    when this process is not the driver of a submitted job.

    Ray's job supervisor hands the job's config to the driver in an environment variable
    of its own; the public `ray.get_runtime_context().runtime_env` only exists once
    `ray.init` has run, and `init_ray` needs it before (to pass only what the job lacks),
    as does a path resolved before Ray starts (`storage.absolute`). So this one function
    reads Ray's internal variable (ray/_private/runtime_env/constants.py).
    """
    config = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if config is None:
        return None
    return json.loads(config).get("runtime_env") or {}


def set_up_worker_process() -> None:
    """Every Ray worker's set-up, before it runs anything (the runtime_env's
    worker_process_setup_hook): TensorFlow's quiet first import, whoever makes it (Ray
    itself imports TensorFlow in Train's controller and workers), Ray Data's notice, and
    the state API pointed at this worker's own cluster."""
    install_filtered_tensorflow_import()
    hide_progress_bars_off_notice()
    point_state_api_at_own_cluster()


def point_state_api_at_own_cluster() -> None:
    """Make Ray's state API in this worker query the cluster the worker belongs to.

    Called without an address, the state API looks for a cluster on the machine and
    fails when it finds several ("Found multiple active Ray instances"): with two local
    runs at once, Ray Train's PlacementGroupCleaner printed that traceback in every
    training stage. RAY_ADDRESS is where it looks first; a job's driver sets its own.
    """
    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


def hide_progress_bars_off_notice() -> None:
    """Ray Data's WARNING "Progress bars disabled", once per process that runs a dataset
    where we turned its bars off (training workers; bulk inference, which shows its own
    line).

    Ray has no switch for this notice (no Ray issue asks for one; it is logged in
    ray/data/_internal/progress/__init__.py, get_progress_manager), so its logger's
    internal name is set here, the one place that names it; Ray Data's other warnings stay.
    """
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def without_progress_bars() -> AbstractContextManager[None]:
    """Build datasets without progress bars (a dataset keeps the context it was made in):
    for datasets that training workers iterate, whose per-epoch lines say more, and for
    bulk inference, which prints its own line."""
    return data_context(enable_progress_bars=False)


def ray_logs_dir() -> Path | None:
    """Where this Ray session keeps every process's full log, on the node running this."""
    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    return Path(context.get_temp_dir()) / context.get_session_name() / "logs"
