"""The exceptions users see: the CLI prints each as a single line, with its exit status."""

from __future__ import annotations

import signal

# Exit statuses (sysexits-like, as shells report a signal: 128 + its number).
USAGE_ERROR = 2
FAILURE = 1


class PosterRayError(Exception):
    """A problem with the user's input (a flag, a file, a folder), phrased as what to fix.

    Exit status 2: the command as given cannot work."""

    exit_code = USAGE_ERROR


class RunFailure(PosterRayError):
    """The command was right but the run failed (a file it holds is corrupt, a disk is
    read-only, a job died): exit status 1."""

    exit_code = FAILURE


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would raise KeyboardInterrupt, so every stage stops
    the same way for both."""


# The exit statuses of an interrupted command: Ctrl-C, SIGTERM.
INTERRUPT_STATUSES = (128 + int(signal.SIGINT), 128 + int(signal.SIGTERM))


def interrupt_exit_code(error: KeyboardInterrupt) -> int:
    """130 for Ctrl-C (SIGINT), 143 for SIGTERM: what a shell reports for each signal."""
    number = signal.SIGTERM if isinstance(error, Terminated) else signal.SIGINT
    return 128 + int(number)


def interrupt_behind(error: BaseException) -> KeyboardInterrupt | None:
    """The interrupt `error` was raised while handling, if any: a library's clean-up that
    fails as Ctrl-C unwinds it (Ray Data closing its executor, say) replaces the
    KeyboardInterrupt with its own error, and the user still pressed Ctrl-C."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return error
        seen.add(id(error))
        error = error.__context__
    return None
