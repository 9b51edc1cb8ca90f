"""The local Ray's reaper: when the driver dies, however it dies, its processes die too.

Ray ties its GCS and raylet to the driver that started them (the kernel kills them
when it exits, PR_SET_PDEATHSIG), but not the raylet's agents: after `kill -9` of a
driver, Ray's DashboardAgent and RuntimeEnvAgent lived on, listening. Ray's own reaper
is not started where the kernel's fate sharing exists, and it would kill the driver's
whole process group (the user's shell job). So `init_ray` starts this small process
beside a local Ray: it notes the driver's descendants every half second (every 2 s
once none has started for 3 s) and, when the driver's end of its stdin pipe closes
(the driver exited or was killed), ends every process it noted that still runs, and
every process that carries the driver's mark in its environment (`MARK_VAR`, inherited
by everything the driver and its Ray start: a worker started after the last poll, whose
raylet then died and left it to init, is found so): SIGTERM, then SIGKILL after a grace
period.

Linux only (it reads /proc); elsewhere `init_ray` does not start it. A process is
matched by its pid and its start time, so a pid the system reused is never touched.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from pathlib import Path

POLL_SECONDS = 0.5
QUIET_POLL_SECONDS = 2.0
QUIET_POLLS = 6
GRACE_SECONDS = 3.0
PROC = Path("/proc")
# Set by the driver before its Ray starts, to the driver's own `mark()`.
MARK_VAR = "POSTER_RAY_DRIVER"

Process = tuple[int, int]  # (pid, start time in clock ticks since boot)


def parent_and_start(pid: int) -> tuple[int, int] | None:
    """A process's parent pid and start time, from /proc/PID/stat; None once it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)"; comm may hold spaces
    if fields[0] == "Z":  # a zombie has ended; only its parent's wait remains
        return None
    return int(fields[1]), int(fields[19])


def descendants(pid: int) -> set[Process]:
    """Every running descendant of `pid` (children, their children, ...)."""
    children: dict[int, list[Process]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (found := parent_and_start(int(entry.name))):
            children.setdefault(found[0], []).append((int(entry.name), found[1]))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child[0])
    return found


def mark(pid: int) -> str:
    """What marks the processes of driver `pid`: its pid and start time, unique on the
    machine for as long as it runs."""
    found = parent_and_start(pid)
    return f"{pid}:{found[1] if found else 0}"


def marked(value: str) -> set[Process]:
    """Every running process whose environment, as it started, holds MARK_VAR=value."""
    entry = f"{MARK_VAR}={value}".encode()
    found = set()
    for path in PROC.iterdir():
        if path.name.isdigit():
            try:
                environ = (path / "environ").read_bytes()
            except OSError:  # ended, or another user's
                continue
            if entry in environ.split(b"\0") and (stat := parent_and_start(int(path.name))):
                found.add((int(path.name), stat[1]))
    return found


def running(processes: set[Process]) -> set[Process]:
    """Those of `processes` still running as the same process (pid and start time)."""
    return {
        (pid, start) for pid, start in processes if (parent_and_start(pid) or (0, -1))[1] == start
    }


def end(processes: set[Process], grace: float = GRACE_SECONDS) -> None:
    """SIGTERM each, then SIGKILL what still runs after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.0)):
        for pid, _ in running(processes):
            with contextlib.suppress(OSError):  # ended meanwhile
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while running(processes) and time.monotonic() < deadline:
            time.sleep(0.1)


def watch(driver: int, driver_mark: str) -> None:
    """Note the driver's descendants until stdin closes, then end the ones still running,
    whatever they started meanwhile and whatever carries `driver_mark`."""
    me = os.getpid()
    noted: set[Process] = set()
    quiet = 0  # polls in a row that found no new process
    while True:
        # A poll reads every process's /proc stat: twice a second, and every 2 s once no
        # process has started for QUIET_POLLS (an idle local Ray's reaper: a third of the CPU).
        wait = QUIET_POLL_SECONDS if quiet >= QUIET_POLLS else POLL_SECONDS
        readable, _, _ = select.select([sys.stdin], [], [], wait)
        if readable and not os.read(sys.stdin.fileno(), 4096):
            break  # end of file: the driver is gone
        now = running(noted) | {proc for proc in descendants(driver) if proc[0] != me}
        quiet = 0 if now - noted else quiet + 1
        noted = now
    for pid, _ in running(noted):
        noted |= descendants(pid)
    noted |= {proc for proc in marked(driver_mark) if proc[0] != me}
    end(noted)


if __name__ == "__main__":
    # Ctrl-C in a terminal reaches the whole foreground group: the reaper outlives it to
    # clean up after the driver, and ends by itself once its work is done.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch(int(sys.argv[1]), sys.argv[2])
