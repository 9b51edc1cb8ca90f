"""A request no node can place is seen in Ray's pending demands and reported in a line."""

from __future__ import annotations

import time

import ray

from poster_ray.waits import pending_demands, reporting_waits


def test_a_task_waiting_on_a_resource_no_node_has_is_reported(ray_session, capsys):
    @ray.remote(num_cpus=0, resources={"poster_ray_absent": 1})
    def never_placed() -> None:
        pass

    waiting = never_placed.remote()
    try:
        with reporting_waits(threshold=1.0, poll=0.5):
            deadline = time.monotonic() + 60
            while "waiting" not in capsys.readouterr().out and time.monotonic() < deadline:
                time.sleep(0.5)
            assert ("1 poster_ray_absent", 1) in pending_demands()
    finally:
        ray.cancel(waiting, force=True)
