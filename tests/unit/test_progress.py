"""The progress line of a long job: its figures, redrawn on a terminal, a line a minute in a log.

A fake clock drives every test: no sleeping, and the throttling is exact.
"""

from __future__ import annotations

import io

import pytest

from poster_ray.progress import Progress, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def progress(
    tty: bool, total: int = 10_000, done_before: int = 0
) -> tuple[Progress, io.StringIO, FakeClock]:
    stream, clock = io.StringIO(), FakeClock()
    return (
        Progress(total, done_before, 10, done_before // 1000, stream, tty=tty, clock=clock),
        stream,
        clock,
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (12.4, "12s"), (247, "4m 07s"), (3720, "1h 02m"), (90000, "25h 00m")],
)
def test_durations_read_like_a_clock(seconds, text):
    assert format_duration(seconds) == text


def test_the_line_has_files_rate_eta_errors_and_parts():
    job, _, clock = progress(tty=True, total=10_000, done_before=2_000)
    clock.now += 10
    job.advance(1_000, errors=3)
    job.committed()
    assert job.line() == (
        "3,000/10,000 files (30.0%), 100.0 img/s, ETA 1m 10s, 3 errors, 3/10 parts"
    )
    assert job.figures() == {
        "files_done": 3_000,
        "files_total": 10_000,
        "parts_done": 3,
        "parts_total": 10,
        "images_per_s": 100.0,
        "eta_s": 70,
        "errors": 3,
    }


def test_before_any_file_the_eta_is_unknown():
    job, _, clock = progress(tty=False)
    clock.now += 30
    assert "0.0 img/s, ETA --," in job.line()


def test_on_a_terminal_the_line_is_redrawn_in_place_twice_a_second_at_most():
    job, stream, clock = progress(tty=True)
    for _ in range(9):  # 9 batches in 0.9 s: one redraw, at 0.5 s
        clock.now += 0.1
        job.advance(64, errors=0)
    assert stream.getvalue().count("\r") == 1
    assert "\n" not in stream.getvalue()
    clock.now += 0.5
    job.advance(64, errors=1)
    redraws = stream.getvalue().split("\r")[1:]
    assert len(redraws) == 2 and all(text.endswith("\x1b[K") for text in redraws)
    assert redraws[-1].startswith("640/10,000 files") and "1 errors" in redraws[-1]
    job.finish()
    assert stream.getvalue().endswith("\x1b[K\n")  # the terminal's line is ended once


def test_in_a_log_one_line_a_minute_and_a_last_one():
    job, stream, clock = progress(tty=False)
    for _ in range(5 * 60):  # five minutes of one batch a second
        clock.now += 1
        job.advance(10, errors=0)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5
    assert all(line.startswith("progress: ") and "\r" not in line for line in lines)
    assert lines[0].startswith("progress: 600/10,000 files (6.0%), 10.0 img/s, ETA 15m 40s")
    job.finish()
    assert len(stream.getvalue().splitlines()) == 6


def test_the_rate_follows_the_last_minute_not_the_start_up():
    job, _, clock = progress(tty=False, total=100_000)
    clock.now += 30  # start-up: nothing arrives
    for second in range(120):  # then 50 img/s for two minutes
        clock.now += 1
        job.advance(50, errors=0)
        if second == 10:  # already the pipeline's rate, not 550 posters over 41 s
            assert job.figures()["images_per_s"] == pytest.approx(50, abs=1)
    assert job.figures()["images_per_s"] == pytest.approx(50, abs=1)
    for _ in range(120):  # then 200 img/s
        clock.now += 1
        job.advance(200, errors=0)
    figures = job.figures()
    assert figures["images_per_s"] == pytest.approx(200, abs=4)
    assert figures["eta_s"] == pytest.approx((100_000 - 30_000) / 200, rel=0.03)
