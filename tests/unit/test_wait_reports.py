"""When a wait on resources is worth a line, decided without Ray."""

from __future__ import annotations

import time

from poster_ray.waits import WAIT_REPORT_SECONDS, WaitWatch, reporting_waits

CPU_TASK = [("1 CPU", 1)]


def test_a_wait_shorter_than_the_threshold_says_nothing():
    watch = WaitWatch()
    assert watch.observe(CPU_TASK, 0.0) is None
    assert watch.observe(CPU_TASK, WAIT_REPORT_SECONDS - 1) is None


def test_a_wait_past_the_threshold_is_one_line_naming_what_waits():
    watch = WaitWatch(threshold=60)
    watch.observe(CPU_TASK, 0.0)
    line = watch.observe(CPU_TASK, 61.0)
    assert line == (
        "waiting 61 s for resources no node has free: 1 x [1 CPU] "
        "(`ray status` shows the cluster; a node may be lost or busy)"
    )
    assert watch.observe(CPU_TASK, 200.0) is None  # said once


def test_a_wait_that_ends_or_changes_starts_the_clock_again():
    watch = WaitWatch(threshold=60)
    watch.observe(CPU_TASK, 0.0)
    assert watch.observe([], 30.0) is None
    assert watch.observe(CPU_TASK, 70.0) is None  # waiting again since 70 s, not 0 s
    other = [("0.4 CPU", 2)]
    assert watch.observe(other, 100.0) is None
    assert "2 x [0.4 CPU]" in watch.observe(other, 161.0)


def test_the_driver_thread_prints_the_line_and_stops_with_the_block(capsys):
    with reporting_waits(threshold=0.05, poll=0.01, demands=lambda: CPU_TASK):
        time.sleep(0.3)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("waiting 0 s for resources")


def test_a_failing_query_is_not_the_stage_s_failure(capsys):
    def gone():
        raise ConnectionError("GCS gone")

    with reporting_waits(threshold=0.0, poll=0.01, demands=gone):
        time.sleep(0.05)
    assert capsys.readouterr().out == ""
