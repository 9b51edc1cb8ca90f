"""Ray Data's context, changed for the length of a block and restored afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from copy import copy

import ray


@contextmanager
def data_context(**settings) -> Iterator[None]:
    """Ray Data's context with `settings` while the block runs, as it was afterwards."""
    context = ray.data.DataContext.get_current()
    previous = {name: getattr(context, name) for name in settings}
    for name, value in settings.items():
        setattr(context, name, value)
    try:
        yield
    finally:
        for name, value in previous.items():
            setattr(context, name, value)


def all_cpus_to_one_operator() -> AbstractContextManager[None]:
    """Let a one-operator pipeline use every CPU while it runs.

    Ray Data reserves part of the CPUs for operators that a single read->decode->write
    chain does not have: on 2 cores that left decoding at 1.2 tasks in flight, 0.7x the
    speed with it off (bench/preprocess_throughput.py).
    """
    return data_context(op_resource_reservation_enabled=False)


def ordered_execution() -> AbstractContextManager[None]:
    """Datasets made while the block runs keep their input's order: the same posters
    reach the same training worker on every run, a resumed one included."""
    options = copy(ray.data.DataContext.get_current().execution_options)
    options.preserve_order = True
    return data_context(execution_options=options)
