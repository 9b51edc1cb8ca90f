"""Progress of long work: files done of total, images/s, ETA and errors, on one line.

Bulk inference counts rows as its driver commits them; decoding and feature extraction
run as Ray Data writes, so their tasks count what they finish on a small counter actor
that the driver reads (`counted_progress`).

On a terminal the line is redrawn in place (``\\r``) at most twice a second; in a log
(`ray job logs`, a file, a pipe) one line is printed a minute, so an overnight job leaves
a readable trail instead of one line per committed chunk. The rate is measured over the
last minute, so the ETA follows the job's steady speed rather than its start-up.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

import ray

REDRAW_EVERY_S = 0.5  # on a terminal
LOG_EVERY_S = 60.0  # in a log
RATE_WINDOW_S = 60.0
# Below this much history the window is too short to trust: use the whole run instead.
MIN_WINDOW_S = 5.0


def format_duration(seconds: float) -> str:
    """1h 02m, 4m 07s, 12s."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


class Progress:
    """Counts a job's files as their rows arrive, and shows them as the output allows."""

    def __init__(
        self,
        total: int,
        done_before: int,
        parts: int,
        parts_before: int,
        stream: TextIO,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.done, self.errors = total, done_before, 0
        self.parts, self.parts_done = parts, parts_before
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.clock = clock
        self.started = self.shown = clock()
        self.processed = 0
        self.history: deque[tuple[float, int]] = deque()  # (time, processed) of arrivals

    def advance(self, files: int, errors: int) -> None:
        """`files` more rows arrived, `errors` of them error rows."""
        now = self.clock()
        self.done, self.processed, self.errors = (
            self.done + files,
            self.processed + files,
            self.errors + errors,
        )
        self.history.append((now, self.processed))
        while len(self.history) > 2 and now - self.history[1][0] >= RATE_WINDOW_S:
            self.history.popleft()
        self.show(now)

    def committed(self) -> None:
        self.parts_done += 1

    def rate(self, now: float) -> float:
        """Images/s over the last minute of arrivals, so start-up (Ray, TensorFlow) does
        not count; over the whole run until arrivals span 5 s."""
        since, processed = self.history[0] if self.history else (self.started, 0)
        if now - since < MIN_WINDOW_S:
            since, processed = self.started, 0
        elapsed = now - since
        return (self.processed - processed) / elapsed if elapsed > 0 else 0.0

    def figures(self, now: float | None = None) -> dict:
        """The figures of the line, for _summary.json as well."""
        now = self.clock() if now is None else now
        rate = self.rate(now)
        left = self.total - self.done
        return {
            "files_done": self.done,
            "files_total": self.total,
            "parts_done": self.parts_done,
            "parts_total": self.parts,
            "images_per_s": round(rate, 1),
            "eta_s": round(left / rate) if rate > 0 else (0 if left == 0 else None),
            "errors": self.errors,
        }

    def line(self, now: float | None = None) -> str:
        figures = self.figures(now)
        eta = figures["eta_s"]
        percent = 100 * figures["files_done"] / max(1, figures["files_total"])
        return (
            f"{figures['files_done']:,}/{figures['files_total']:,} files ({percent:.1f}%), "
            f"{figures['images_per_s']:.1f} img/s, "
            f"ETA {'--' if eta is None else format_duration(eta)}, "
            f"{figures['errors']:,} errors"
            + (f", {figures['parts_done']}/{figures['parts_total']} parts" if self.parts else "")
        )

    def show(self, now: float) -> None:
        """Redraw the line on a terminal, or log it once a minute."""
        if now - self.shown < (REDRAW_EVERY_S if self.tty else LOG_EVERY_S):
            return
        self.shown = now
        self.write(now)

    def write(self, now: float) -> None:
        if self.tty:
            self.stream.write(f"\r{self.line(now)}\x1b[K")
        else:
            self.stream.write(f"progress: {self.line(now)}\n")
        self.stream.flush()

    def finish(self) -> None:
        """The last line, whatever the throttle says; a terminal's line is ended."""
        self.write(self.clock())
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


@ray.remote(num_cpus=0)
class RowCounter:
    """Rows (and error rows) the tasks of one stage finished, wherever they ran."""

    def __init__(self) -> None:
        self.rows, self.errors = 0, 0

    def add(self, rows: int, errors: int) -> None:
        self.rows, self.errors = self.rows + rows, self.errors + errors

    def counts(self) -> tuple[int, int]:
        return self.rows, self.errors


POLL_EVERY_S = 0.5


@contextmanager
def counted_progress(total: int, stream: TextIO | None = None) -> Iterator[ray.actor.ActorHandle]:
    """A RowCounter for the tasks of work over `total` rows, and its progress line on
    `stream` (stdout) while the body runs; the last figures when it ends."""
    counter = RowCounter.remote()
    progress = Progress(total, 0, 0, 0, sys.stdout if stream is None else stream)
    stopped = threading.Event()

    def follow() -> None:
        while not stopped.wait(POLL_EVERY_S):
            rows, errors = ray.get(counter.counts.remote())
            if rows > progress.processed:
                progress.advance(rows - progress.processed, errors - progress.errors)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    try:
        yield counter
    finally:
        stopped.set()
        follower.join()
        rows, errors = ray.get(counter.counts.remote())
        if rows > progress.processed:
            progress.advance(rows - progress.processed, errors - progress.errors)
        progress.finish()
        ray.kill(counter)
