"""Starting Ray the same way from the CLI, jobs and tests."""

from __future__ import annotations

import os
from pathlib import Path

import ray

from poster_ray import PROCESS_ENV


def init_ray(num_cpus: int | None = None) -> None:
    """Attach to the cluster a job runs in (RAY_ADDRESS), else start a local Ray.

    Idempotent, so a CLI command can call it and tests can start Ray first with a
    small CPU count. Every worker gets poster_ray's PROCESS_ENV; Ray's own logs stay at
    WARNING on the console (the rest is in `ray_logs_dir()`).
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "0")
    ray.init(
        num_cpus=num_cpus,
        runtime_env={
            "env_vars": PROCESS_ENV,
            "worker_process_setup_hook": "poster_ray.quiet_tensorflow.install_quiet_import",
        },
        log_to_driver=True,
        logging_config=ray.LoggingConfig(encoding="TEXT", log_level="WARNING"),
    )
    ray.data.DataContext.get_current().enable_progress_bars = True


def ray_logs_dir() -> Path | None:
    """Where this Ray session keeps every process's full log, on the node running this."""
    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    return Path(context.get_temp_dir()) / context.get_session_name() / "logs"
