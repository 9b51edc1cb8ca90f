"""Starting Ray the same way from the CLI, jobs and tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import ray

from poster_ray import PROCESS_ENV
from poster_ray.storage import SUBMITTED_JOB_ENV_VAR

# Run in every worker process before anything else: TensorFlow's first import, quiet.
SETUP_HOOK = "poster_ray.quiet_tensorflow.install_quiet_import"


def init_ray(num_cpus: int | None = None, dashboard: bool = True) -> None:
    """Attach to the cluster a job runs in (RAY_ADDRESS), else start a local Ray.

    Idempotent, so a CLI command can call it and tests can start Ray first with a
    small CPU count. Every worker gets poster_ray's PROCESS_ENV; Ray's own logs stay at
    WARNING on the console (the rest is in `ray_logs_dir()`). `dashboard=False` starts a
    local Ray with its dashboard in the minimal mode (no web UI, none of its module
    processes): less start-up and CPU, for work that needs neither (Ray Train's cleanup
    uses the full dashboard's state API).
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "0")
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=dashboard,
        runtime_env=worker_runtime_env(),
        log_to_driver=True,
        logging_config=ray.LoggingConfig(encoding="TEXT", log_level="WARNING"),
    )
    ray.data.DataContext.get_current().enable_progress_bars = True


def worker_runtime_env() -> dict:
    """What every worker needs that the job's own runtime_env does not already give.

    Ray refuses a driver runtime_env that repeats a field or variable of the one a job
    was submitted with (`ray job submit --runtime-env-json`), so only the rest is added.
    """
    given = json.loads(os.environ.get(SUBMITTED_JOB_ENV_VAR, "{}")).get("runtime_env") or {}
    env_vars = {
        key: value for key, value in PROCESS_ENV.items() if key not in (given.get("env_vars") or {})
    }
    extra = {"env_vars": env_vars} if env_vars else {}
    if "worker_process_setup_hook" not in given:
        extra["worker_process_setup_hook"] = SETUP_HOOK
    return extra


def ray_logs_dir() -> Path | None:
    """Where this Ray session keeps every process's full log, on the node running this."""
    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    return Path(context.get_temp_dir()) / context.get_session_name() / "logs"
