"""Processes and ports of one driver, found from the pid the test started (never by
scanning for names): its descendants, what they listen on, and whether they run."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from poster_ray.reaper import Process, descendants, running

__all__ = [
    "Process",
    "descendants",
    "end_all",
    "listening_sockets",
    "running",
    "wait_until",
]


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process `pid` holds open."""
    inodes = set()
    try:
        for fd in (Path("/proc") / str(pid) / "fd").iterdir():
            target = os.readlink(fd) if fd.is_symlink() else ""
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    except OSError:  # ended meanwhile
        pass
    return inodes


def listening_sockets(pids: set[int] | None = None) -> dict[str, tuple[int, str]]:
    """{socket inode: (port, bound address in hex, as /proc/net lists it)} of every TCP
    socket listening, on this machine or only of processes `pids`. The inode names one
    socket: a port number can be bound again by another program once it is free."""
    wanted = set().union(*(socket_inodes(pid) for pid in pids)) if pids is not None else None
    sockets = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and (wanted is None or inode in wanted):  # 0A: LISTEN
                address, port = local.rsplit(":", 1)
                sockets[inode] = (int(port, 16), address)
    return sockets


def is_loopback(address: str) -> bool:
    """A /proc/net address (hex) that is 127.0.0.1 or ::1, or 127.0.0.1 mapped to IPv6."""
    return address in {
        "0100007F",
        "00000000000000000000000001000000",
        "0000000000000000FFFF00000100007F",
    }


def wait_until(condition, timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def end_all(processes: set[Process]) -> None:
    """Kill those of `processes` still running (a failed test leaves nothing behind)."""
    for pid, _ in running(processes):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
