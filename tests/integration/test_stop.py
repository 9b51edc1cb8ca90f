"""A local run, however it ends, leaves nothing running or listening.

Each test starts `poster-ray infer` as a real driver process with a Ray of its own (its
own temp dir, its own session: the suite's shared Ray is not involved), waits until the
job's Ray workers run, stops the driver (SIGKILL, SIGTERM, or Ctrl-C to the driver or,
as a terminal sends it, to its whole process group), and follows the processes of that
driver by the pids it saw descend from it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from infer_support import make_bundle
from processes import (
    descendants,
    end_all,
    is_loopback,
    listening_sockets,
    running,
    wait_until,
)
from synthetic import make_poster

from poster_ray.cli import INTERRUPTED
from poster_ray.reaper import Process

# Long enough a job that it is still running when it is stopped: this many posters.
POSTERS = 3000


@pytest.fixture(scope="module")
def job_argv(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("stop")
    bundle = make_bundle(root)
    poster = make_poster(root / "poster.jpg")
    (root / "posters").mkdir()
    for i in range(POSTERS):  # hard links: thousands of files, one poster's bytes
        os.link(poster, root / "posters" / f"tt{i:07d}.jpg")
    return ["infer", str(bundle), "--input", str(root / "posters"), "--num-cpus", "2"]


@pytest.fixture
def ray_temp() -> Iterator[str]:
    """A Ray temp dir of the test's own: short, as Ray's socket paths must be."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    yield temp
    shutil.rmtree(temp, ignore_errors=True)


def start_driver(argv: list[str], out: Path, logs: Path, temp: str) -> subprocess.Popen:
    """The job in a new session (a terminal's process group of its own), its Ray in
    `temp`."""
    env = {**os.environ, "RAY_TMPDIR": temp}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "poster_ray.cli", *argv, "--output", str(out)],
        stdout=(logs / "stdout").open("w"),
        stderr=(logs / "stderr").open("w"),
        env=env,
        start_new_session=True,
        # As a terminal starts a command: SIGINT handled (a test run from a background
        # job inherits it ignored, and Python then keeps ignoring it).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def running_job(driver: subprocess.Popen, logs: Path) -> set[Process]:
    """The driver's descendants once its Ray runs job tasks (not only idle workers).

    On a machine loaded enough that Ray's start-up times out (30 s, fixed in Ray), the
    job says so in one line: then what it started must be gone too, and the test can go
    no further."""
    seen: set[Process] = set()

    def busy() -> bool:
        seen.update(descendants(driver.pid))
        return driver.poll() is not None or any(
            command.startswith("ray::") and command.split()[0] not in IDLE
            for command in map(command_line, running(seen))
        )

    assert wait_until(busy, timeout=180, step=0.5), "the job never started its Ray tasks"
    if driver.poll() is not None:
        err = (logs / "stderr").read_text()
        assert driver.returncode == 1 and err.splitlines()[-1].startswith(
            "poster-ray: error: Ray did not start"
        ), err[-2000:]
        assert wait_until(lambda: not running(seen), timeout=10)
        pytest.skip("Ray's start-up timed out on this loaded machine (and left nothing)")
    return descendants(driver.pid)


IDLE = {"ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent"}


def command_line(process: Process) -> str:
    try:
        return Path(f"/proc/{process[0]}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def assert_nothing_left(started: set[Process], sockets: dict[str, tuple[int, str]]) -> None:
    # The reaper ends them within its poll and grace period (3.5 s), given the CPU: on a
    # machine loaded by the rest of the suite one still ran after 10 s.
    assert wait_until(lambda: not running(started), timeout=30), [
        command_line(process)[:60] for process in running(started)
    ]

    # Every socket the run listened on closes. By inode, not port: on a shared machine
    # another program (another loopback Ray) may bind a freed port number again. Given
    # time as the processes are: under CI's load a socket outlived its noted process.
    def still_listening() -> set[str]:
        return set(sockets) & set(listening_sockets())

    assert wait_until(lambda: not still_listening(), timeout=30), [
        sockets[inode] for inode in still_listening()
    ]


def test_kill_9_of_the_driver_leaves_no_process_and_no_port(job_argv, tmp_path, ray_temp):
    driver = start_driver(job_argv, tmp_path / "out", tmp_path, ray_temp)
    started: set[Process] = set()
    try:
        started = running_job(driver, tmp_path)
        sockets = listening_sockets({pid for pid, _ in started} | {driver.pid})
        ports = dict(sockets.values())
        assert ports and all(is_loopback(address) for address in ports.values()), ports
        driver.kill()
        driver.wait()
        assert_nothing_left(started, sockets)
    finally:
        driver.kill()
        end_all(started)


def driver_crash_dump(err: str, pid: int) -> bool:
    """Whether `err` holds the driver's own fatal-signal dump (as Ray's core worker wrote
    on SIGTERM before `runtime.stop_on_sigterm`), found by the pid in its logging line:
    "[... E PID TID] logging.cc:474: *** SIGTERM received at time=...".

    Not another process's: once (2026-12-04, in 1 of 2 suite runs), a Ray process that
    was not the driver (no numpy loaded; ray._raylet was) aborted in abseil ("Mutex
    corrupt: both reader and writer lock held") as the stop began, its dump in the
    driver's stderr: a race inside Ray, not reproduced, that this project cannot reach."""
    return re.search(rf"E {pid} \d+\] logging\.cc:\d+: \*\*\* SIG", err) is not None


@pytest.mark.parametrize(
    ("stop", "status"),
    [
        (lambda driver: os.kill(driver.pid, signal.SIGINT), 130),  # Ctrl-C, to the driver
        # A terminal's Ctrl-C: to the whole foreground group, Ray's processes too.
        (lambda driver: os.killpg(driver.pid, signal.SIGINT), 130),
        (lambda driver: os.kill(driver.pid, signal.SIGTERM), 143),
    ],
    ids=["ctrl-c", "ctrl-c-in-a-terminal", "sigterm"],
)
def test_a_stopped_driver_says_so_in_one_line_and_ends_its_ray(
    job_argv, tmp_path, ray_temp, stop, status
):
    driver = start_driver(job_argv, tmp_path / "out", tmp_path, ray_temp)
    started: set[Process] = set()
    try:
        started = running_job(driver, tmp_path)
        sockets = listening_sockets({pid for pid, _ in started} | {driver.pid})
        stop(driver)
        returned = driver.wait(timeout=60)
        err = (tmp_path / "stderr").read_text()
        assert returned == status, err[-3000:]
        assert err.endswith(f"poster-ray: interrupted: {INTERRUPTED['infer']}\n"), err[-2000:]
        assert "Traceback" not in err and not driver_crash_dump(err, driver.pid), err[-2000:]
        assert_nothing_left(started, sockets)
    finally:
        driver.kill()
        end_all(started)
