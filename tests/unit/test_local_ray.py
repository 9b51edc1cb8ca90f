"""A local Ray's set-up: the reaper ends a driver's processes when the driver dies (even
by SIGKILL), and the loopback switch holds only while a local Ray starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from processes import descendants, end_all, running, wait_until

# A driver that starts the reaper as init_ray does, then (after argv[1] seconds) a child
# that escapes its process group and ignores SIGTERM (as Ray's agents outlived their
# driver), and waits. The child is started without the driver's mark, so that only the
# reaper's polls can find it.
DRIVER = """
import os, subprocess, sys, time
from poster_ray.reaper import MARK_VAR
from poster_ray.runtime import start_reaper
start_reaper()
time.sleep(float(sys.argv[1]))
unmarked = {key: value for key, value in os.environ.items() if key != MARK_VAR}
subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"],
    start_new_session=True, env=unmarked)
print("ready", flush=True)
time.sleep(300)
"""


def start_driver(code: str, *argv: str) -> subprocess.Popen:
    """`code` as a driver in a session of its own, its stdout read by the test."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def kill_and_wait(driver: subprocess.Popen, processes: set) -> bool:
    """SIGKILL the driver; whether `processes` end within 10 s (the reaper's grace and
    SIGKILL included: SIGTERM is ignored by the test's escaped child)."""
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    return wait_until(lambda: not running(processes), timeout=10)


@pytest.mark.parametrize(
    ("quiet_for", "noted_within"),
    [(0.0, 1.0), (4.0, 3.0)],  # the reaper polls every 0.5 s, every 2 s once quiet for 3 s
    ids=["while-processes-start", "once-quiet"],
)
def test_a_killed_drivers_processes_end_within_seconds(quiet_for, noted_within):
    driver = start_driver(DRIVER, str(quiet_for))
    started = set()
    try:
        assert driver.stdout.readline() == "ready\n"
        started = descendants(driver.pid)
        assert len(started) == 2  # the reaper and the escaped child
        time.sleep(noted_within)
        assert kill_and_wait(driver, started)
    finally:
        driver.kill()
        end_all(started)


# A driver that starts the reaper, then a process that is at once left to init (as a Ray
# worker started after the reaper's last poll is, once its raylet dies): started by a
# child that exits, it is never the driver's descendant, only marked as the driver's.
ORPHANING_DRIVER = """
import subprocess, sys, time
from poster_ray.runtime import start_reaper
start_reaper()
subprocess.run([sys.executable, "-c",
    "import subprocess, sys; print(subprocess.Popen([sys.executable, '-c', "
    "'import time; time.sleep(300)'], start_new_session=True).pid)"])
sys.stdout.flush()
time.sleep(300)
"""


def test_a_killed_drivers_orphaned_process_is_found_by_its_mark():
    from poster_ray.reaper import parent_and_start

    driver = start_driver(ORPHANING_DRIVER)
    orphan = set()
    try:
        pid = int(driver.stdout.readline())
        orphan = {(pid, parent_and_start(pid)[1])}
        assert parent_and_start(pid)[0] != driver.pid  # not the driver's descendant
        assert kill_and_wait(driver, orphan)
    finally:
        driver.kill()
        end_all(orphan)


def test_only_processes_started_with_the_mark_are_marked():
    from poster_ray.reaper import MARK_VAR, marked

    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    env = {**os.environ, MARK_VAR: f"test-{os.getpid()}"}
    mine = subprocess.Popen(sleep, env=env)
    other = subprocess.Popen(sleep, env={**env, MARK_VAR: f"other-{os.getpid()}"})
    try:
        assert {pid for pid, _ in marked(f"test-{os.getpid()}")} == {mine.pid}
    finally:
        for process in (mine, other):
            process.kill()
            process.wait()


# A driver that starts the reaper, says which process it is, and exits at once.
SHORT_DRIVER = """
from poster_ray import runtime
from poster_ray.reaper import parent_and_start
runtime.start_reaper()
reaper = runtime._REAPERS[0].pid
print(reaper, parent_and_start(reaper)[1], flush=True)
"""


def test_the_reaper_ends_when_its_driver_exits_normally():
    finished = subprocess.run(
        [sys.executable, "-c", SHORT_DRIVER], capture_output=True, text=True, timeout=60
    )
    assert finished.returncode == 0, finished.stderr
    pid, start = (int(word) for word in finished.stdout.split())
    assert wait_until(lambda: not running({(pid, start)}), timeout=10)


def test_the_loopback_switch_holds_only_while_a_local_ray_starts(monkeypatch):
    from ray._private import ray_constants

    from poster_ray.runtime import LOOPBACK_ENV, loopback_only

    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    before = ray_constants.ENABLE_RAY_CLUSTER
    with loopback_only(True):
        assert {key: os.environ[key] for key in LOOPBACK_ENV} == LOOPBACK_ENV
        assert ray_constants.ENABLE_RAY_CLUSTER is False
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
    assert ray_constants.ENABLE_RAY_CLUSTER is before
    with loopback_only(False):  # attaching to a cluster: its own addresses
        assert ray_constants.ENABLE_RAY_CLUSTER is before
