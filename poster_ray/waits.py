"""A stage that waits on resources says so, in one line, instead of going quiet.

Plans are sized to fit beside each other (`resources.plan_workers`), but a cluster can
still be short: a node lost, another job holding CPUs, an autoscaler that never adds
the node asked for. Ray then queues the request silently. A thread of the driver asks
Ray's GCS for the demands it cannot place (what `ray status` lists as "Pending
Demands") and prints one line when the same wait has lasted `WAIT_REPORT_SECONDS`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

# How long a request may wait for resources before the driver says so: longer than a
# node takes to start or a task queue to drain, short enough that a hang is never silent.
WAIT_REPORT_SECONDS = 60.0
POLL_SECONDS = 5.0

Demand = tuple[str, int]  # a resource bundle, as text, and how many wait for it


def pending_demands() -> list[Demand]:
    """Ray's unplaced task, actor and placement-group requests, from the GCS."""
    import ray
    from ray.autoscaler.v2.sdk import get_cluster_status

    status = get_cluster_status(ray.get_runtime_context().gcs_address)
    demands = status.resource_demands
    by_count = [
        request
        for demand in (*demands.ray_task_actor_demand, *demands.placement_group_demand)
        for request in demand.bundles_by_count
    ]
    return sorted((bundle_text(request.bundle), request.count) for request in by_count)


def bundle_text(bundle: dict[str, float]) -> str:
    return ", ".join(f"{value:g} {name}" for name, value in sorted(bundle.items()))


class WaitWatch:
    """Decides when a wait is worth a line: the same demands for `threshold` seconds,
    said once per wait (a new line only when what waits changes or the wait ends)."""

    def __init__(self, threshold: float = WAIT_REPORT_SECONDS) -> None:
        self.threshold = threshold
        self.waiting: list[Demand] = []
        self.since = 0.0
        self.said = False

    def observe(self, demands: list[Demand], now: float) -> str | None:
        if demands != self.waiting:
            self.waiting, self.since, self.said = demands, now, False
        if not demands or self.said or now - self.since < self.threshold:
            return None
        self.said = True
        what = "; ".join(f"{count} x [{bundle}]" for bundle, count in demands)
        return (
            f"waiting {now - self.since:.0f} s for resources no node has free: {what} "
            "(`ray status` shows the cluster; a node may be lost or busy)"
        )


@contextlib.contextmanager
def reporting_waits(
    threshold: float = WAIT_REPORT_SECONDS,
    poll: float = POLL_SECONDS,
    demands: Callable[[], list[Demand]] = pending_demands,
) -> Iterator[None]:
    """While the block runs, print one line whenever a request waited `threshold` s."""
    watch, stop = WaitWatch(threshold), threading.Event()

    def watch_loop() -> None:
        while not stop.wait(poll):
            try:
                line = watch.observe(demands(), time.monotonic())
            except Exception:  # the GCS busy or gone: the stage itself will say why
                continue
            if line:
                print(line, flush=True)

    thread = threading.Thread(target=watch_loop, name="poster-ray-waits", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
