"""Starting Ray the same way from the CLI, jobs and tests."""

from __future__ import annotations

import os

import ray


def init_ray(num_cpus: int | None = None) -> None:
    """Attach to the cluster a job runs in (RAY_ADDRESS), else start a local Ray.

    Idempotent, so a CLI command can call it and tests can start Ray first with a
    small CPU count.
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "0")
    ray.init(num_cpus=num_cpus, log_to_driver=True, configure_logging=True, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = True
