"""Hardware decisions, each branch forced on any machine: native bfloat16 detection, the
precision each worker resolves, and worker plans from the nodes of a cluster."""

from __future__ import annotations

import os

import pytest

from poster_ray.errors import PosterRayError
from poster_ray.resources import (
    Node,
    WorkerPlan,
    available_memory,
    cpu_has_native_bfloat16,
    plan_workers,
    resolve_precision,
)

HEAD_WITHOUT_WORK = Node("head", cpus=0, gpus=0)  # cluster.yaml's head: CPU 0


def cpu(count: float, gpus: float = 0, name: str = "node") -> Node:
    return Node(f"{name}-{count}-{gpus}", cpus=count, gpus=gpus)


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("fpu sse avx2 avx512f avx512_bf16 avx512_vnni", True),  # AMD Zen 4+, Intel Cooper Lake+
        ("fpu avx512f amx_bf16 amx_tile amx_int8", True),  # Intel Sapphire Rapids+
        ("fpu sse avx2 avx512f avx512_vnni", False),
        ("", False),
    ],
)
def test_native_bfloat16_comes_from_the_cpu_flags(flags, native):
    assert cpu_has_native_bfloat16(f"processor : 0\nflags : {flags}\n") is native


@pytest.mark.parametrize(
    ("requested", "gpu", "native", "expected"),
    [
        ("auto", True, False, "float16"),
        ("auto", False, True, "bfloat16"),
        ("auto", False, False, "float32"),
        ("bfloat16", False, False, "bfloat16"),  # forced: obeyed even where emulated
        ("float32", True, True, "float32"),
    ],
)
def test_each_worker_resolves_its_precision_from_its_hardware(requested, gpu, native, expected):
    assert resolve_precision(requested, gpu, native) == expected


def test_an_unknown_precision_is_refused():
    with pytest.raises(PosterRayError, match="unknown precision 'int8'"):
        resolve_precision("int8", False, True)


def test_one_training_worker_per_node_each_with_what_its_node_has():
    """The issue's cluster: two 16-CPU workers got 19.5 CPUs each from cluster totals."""
    plan = plan_workers([HEAD_WITHOUT_WORK, cpu(16, name="a"), cpu(16, name="b")], "training")
    assert plan == WorkerPlan(
        workers=2, cpus_per_worker=15.9, gpus_per_worker=0, threads=16, task_cpus=0.1
    )


def test_a_head_with_cpus_counts_and_the_smallest_node_sets_the_share():
    plan = plan_workers([cpu(8, name="head"), cpu(16, name="a"), cpu(16, name="b")], "training")
    assert (plan.workers, plan.cpus_per_worker, plan.threads) == (3, 7.9, 8)


def test_more_workers_than_nodes_share_a_node():
    plan = plan_workers([cpu(2)], "training", workers=2)
    assert (plan.workers, plan.cpus_per_worker, plan.threads) == (2, 0.95, 1)


def test_tuning_trials_running_at_once_share_the_nodes():
    plan = plan_workers([cpu(2)], "tuning", workers=1, groups=2)
    assert (plan.workers, plan.cpus_per_worker) == (1, 0.95)


def test_gpu_workers_are_one_per_gpu_on_the_gpu_nodes():
    nodes = [HEAD_WITHOUT_WORK, cpu(4, gpus=1, name="g1"), cpu(4, gpus=1, name="g2"), cpu(16)]
    plan = plan_workers(nodes, "training", gpu=True)
    assert plan == WorkerPlan(
        workers=2, cpus_per_worker=3.9, gpus_per_worker=1, threads=4, task_cpus=0.1
    )


def test_cpus_left_to_ray_data_tasks_are_still_the_actors_threads():
    """Feature extraction leaves 1 CPU for the decode tasks feeding it; its actor's
    TensorFlow still uses that core while the tasks are idle."""
    plan = plan_workers([cpu(2)], "feature extraction", leave_for_tasks=1.0)
    assert (plan.workers, plan.cpus_per_worker, plan.threads, plan.task_cpus) == (1, 0.9, 2, 1.0)


def test_on_1_cpu_nodes_the_tasks_feeding_the_actors_fit_beside_them():
    """The issue's hang: 2 nodes x 1 CPU, actors of 0.4 CPUs, a read task asking for 1."""
    nodes = [cpu(1, name="a"), cpu(1, name="b")]
    plan = plan_workers(nodes, "feature extraction", leave_for_tasks=1.0)
    assert (plan.workers, plan.cpus_per_worker, plan.task_cpus) == (2, 0.4, 0.6)


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 8, 16])
@pytest.mark.parametrize("leave", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("workers", [None, 2, 3])
def test_workers_and_one_task_always_fit_on_every_node(cpus, leave, workers):
    nodes = [cpu(cpus, name="a"), cpu(cpus, name="b")]
    plan = plan_workers(nodes, "feature extraction", workers, leave_for_tasks=leave)
    per_node = -(-plan.workers // len(nodes))
    assert plan.task_cpus > 0
    assert per_node * plan.cpus_per_worker + plan.task_cpus <= cpus + 1e-9


def test_workers_that_leave_no_room_for_their_tasks_are_refused_in_one_line():
    with pytest.raises(PosterRayError) as refused:
        plan_workers([cpu(1)], "feature extraction", cpus_per_worker=1.0, leave_for_tasks=1.0)
    assert str(refused.value) == (
        "feature extraction: 1 worker(s) of 1 CPUs leave 0 of a 1-CPU node to the tasks "
        "that feed them, which need 0.5; ask for fewer CPUs each"
    )


@pytest.mark.parametrize(
    ("nodes", "kwargs", "message"),
    [
        (
            [cpu(16, name="a"), cpu(16, name="b")],
            {"workers": 3, "cpus_per_worker": 16.0},
            "training: 3 workers of 16 CPUs do not fit on the cluster's nodes",
        ),
        ([HEAD_WITHOUT_WORK], {}, "no Ray node with CPUs for training"),
        ([cpu(16)], {"gpu": True}, "no Ray node with a GPU and CPUs for training"),
        ([cpu(2)], {"workers": 0}, "training needs at least 1 worker"),
    ],
)
def test_a_plan_no_node_can_hold_fails_in_one_line(nodes, kwargs, message):
    with pytest.raises(PosterRayError, match=message):
        plan_workers(nodes, "training", **kwargs)


def test_available_memory_is_what_linux_can_still_hand_out_else_the_free_pages(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(
        "MemTotal:       4096 kB\nMemFree:         512 kB\nMemAvailable:   2048 kB\n"
    )
    assert available_memory(str(meminfo)) == 2048 * 1024  # free plus reclaimable cache
    free_pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert available_memory(str(tmp_path / "absent")) == free_pages
