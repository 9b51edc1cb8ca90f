"""What the hardware allows: the precision policy, and CPUs and threads per worker.

Every decision here takes an explicit override (a precision name, a worker count, CPUs
per worker), so tests run each branch on any machine: a branch chosen only by detecting
the CPU or GPU is a branch CI never sees.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from poster_ray.errors import PosterRayError

# What users ask for, and the Keras dtype policy each concrete choice means.
# "auto": each process picks from its own hardware (resolve_precision).
AUTO_PRECISION = "auto"
PRECISIONS = (AUTO_PRECISION, "float32", "bfloat16", "float16")
KERAS_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
# CPU flags of native bfloat16 arithmetic (Intel AVX512_BF16/AMX, AMD Zen 4 and later).
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# CPUs left unreserved on every node for what runs beside the workers: the driver, a
# tuning trial's function (0.01 CPU), Ray Data's iteration in a worker.
NODE_HEADROOM_CPUS = 0.1
# What a Ray Data read, decode or write task asks for at most: Ray's default, 1 CPU.
TASK_CPUS = 1.0


def cpu_has_native_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively (Linux: the flags in /proc/cpuinfo).

    Elsewhere bfloat16 is emulated: the custom CNN trained 8x slower in it on an AMD EPYC
    without AVX512_BF16.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set(cpuinfo.split())
    return any(flag in flags for flag in BFLOAT16_CPU_FLAGS)


def resolve_precision(requested: str, gpu: bool, native_bfloat16: bool | None = None) -> str:
    """The concrete precision ("float32", "bfloat16" or "float16") for `requested`.

    "auto" is float16 on a GPU (with loss scaling in training), bfloat16 on a CPU that
    has it natively, else float32. An explicit choice is obeyed on any device, so the
    reduced-precision paths can be run, slowly, where they are emulated.
    """
    if requested not in PRECISIONS:
        raise PosterRayError(f"unknown precision {requested!r}; choose one of {PRECISIONS}")
    if requested != AUTO_PRECISION:
        return requested
    if gpu:
        return "float16"
    if native_bfloat16 is None:
        native_bfloat16 = cpu_has_native_bfloat16()
    return "bfloat16" if native_bfloat16 else "float32"


def set_keras_precision(precision: str) -> str:
    """Make `precision` the global Keras dtype policy of this process; returns its name.

    Set every time a model is built, so one run's policy never leaks into the next.
    """
    from poster_ray.tf_import import keras

    policy = KERAS_POLICIES[precision]
    keras.mixed_precision.set_global_policy(policy)
    return policy


def configure_tensorflow_threads(cpus: float) -> int:
    """Size TensorFlow's thread pools to the CPUs this process reserved; returns the count.

    TensorFlow ignores OMP_NUM_THREADS and starts one thread per core of the node: two
    workers with the default pools ran 2.9x slower on 2 cores than with 1 thread each.
    Must run before TensorFlow executes its first operation.
    """
    from poster_ray.tf_import import tf

    threads = max(1, round(cpus))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return threads


def prepare_tensorflow_gpus(tf_config=None, reserved: int | None = None) -> int:
    """Make the GPUs this process sees take memory as they need it; returns their count.

    By default TensorFlow reserves most of each visible GPU's memory at first use, so a
    second process on the same GPU would fail. Must run before TensorFlow first uses a
    device. A process that reserved GPUs from Ray (`reserved`, default: Ray's count for
    it) but sees none fails here: TensorFlow logs a CUDA failure and carries on on the
    CPU, and its log level hides that line. `tf_config` defaults to `tf.config`; tests
    pass a stand-in with GPUs.
    """
    if tf_config is None:
        from poster_ray.tf_import import tf

        tf_config = tf.config
    if reserved is None:
        import ray

        reserved = len(ray.get_gpu_ids()) if ray.is_initialized() else 0
    gpus = tf_config.list_physical_devices("GPU")
    if reserved and not gpus:
        raise PosterRayError(
            f"this process reserved {reserved} GPU(s) but TensorFlow sees none "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}): CUDA failed "
            "to start; rerun with TF_CPP_MIN_LOG_LEVEL=0 to see TensorFlow's reason"
        )
    for gpu in gpus:
        tf_config.experimental.set_memory_growth(gpu, True)
    return len(gpus)


def available_memory(meminfo_path: str = "/proc/meminfo") -> int:
    """Bytes this node can still hand out: Linux's MemAvailable (free memory and
    reclaimable cache), else the free pages."""
    try:
        with open(meminfo_path) as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------- nodes and placement


@dataclass(frozen=True)
class Node:
    """One alive Ray node's schedulable CPUs and GPUs."""

    node_id: str
    cpus: float
    gpus: float


def alive_nodes() -> list[Node]:
    """The alive nodes of the running Ray cluster (a head with CPU 0 runs no work)."""
    import ray

    return [
        Node(node["NodeID"], node["Resources"].get("CPU", 0.0), node["Resources"].get("GPU", 0.0))
        for node in ray.nodes()
        if node["Alive"]
    ]


@dataclass(frozen=True)
class WorkerPlan:
    """How many workers of a kind run, and what each reserves."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: int
    threads: int  # TensorFlow threads per worker
    # CPUs a task may ask for beside the workers on every node that runs them: a task
    # asking for more would wait forever behind workers that never leave.
    task_cpus: float = TASK_CPUS


def plan_workers(
    nodes: list[Node],
    what: str,
    workers: int | None = None,
    gpu: bool = False,
    cpus_per_worker: float | None = None,
    groups: int = 1,
    leave_for_tasks: float = 0.0,
) -> WorkerPlan:
    """Workers for `what` ("training", "inference", ...) that the `nodes` can hold.

    By default one worker per GPU (with `gpu`) or per node with CPUs: on one node, one
    process with every core trains faster than two processes synchronising gradients
    on the same cores. CPUs per worker default to an equal share of the smallest node
    that runs one, less a little headroom, so a request fits on every node it lands on.
    `groups` runs that many such sets at once (tuning trials). `leave_for_tasks` CPUs
    per node stay free for the Ray Data tasks that feed actors (workers holding every
    CPU would leave them unschedulable, and the pipeline would hang); the workers' own
    threads still use them when the tasks are idle. A plan no node can hold fails here,
    in one line, instead of waiting forever for resources.
    """
    usable = [node for node in nodes if node.cpus > 0 and (node.gpus >= 1 or not gpu)]
    if not usable:
        kind = "a GPU and CPUs" if gpu else "CPUs"
        raise PosterRayError(f"no Ray node with {kind} for {what}: is the cluster up?")
    if workers is None:
        workers = int(sum(node.gpus for node in usable)) if gpu else len(usable)
    if workers < 1:
        raise PosterRayError(f"{what} needs at least 1 worker, got {workers}")
    slots = workers * groups
    per_node = math.ceil(slots / len(usable))  # spread as evenly as the nodes allow
    smallest = min(node.cpus for node in usable[: min(slots, len(usable))])
    leave_for_tasks = min(leave_for_tasks, smallest / 2)
    if cpus_per_worker is None:
        free = smallest - NODE_HEADROOM_CPUS - leave_for_tasks
        cpus_per_worker = hundredths(max(0.1, free / per_node))
    fits = sum(
        min(
            int(node.cpus // cpus_per_worker),
            int(node.gpus) if gpu else slots,
        )
        for node in usable
    )
    if fits < slots:
        largest = max(node.cpus for node in usable)
        raise PosterRayError(
            f"{what}: {slots} workers of {cpus_per_worker:g} CPUs{' and 1 GPU' if gpu else ''} "
            f"do not fit on the cluster's nodes (largest: {largest:g} CPUs, "
            f"{len(usable)} usable nodes); ask for fewer workers or fewer CPUs each"
        )
    room = hundredths(smallest - per_node * cpus_per_worker)
    if leave_for_tasks and room < hundredths(leave_for_tasks):
        raise PosterRayError(
            f"{what}: {per_node} worker(s) of {cpus_per_worker:g} CPUs leave {room:g} of a "
            f"{smallest:g}-CPU node to the tasks that feed them, which need "
            f"{leave_for_tasks:g}; ask for fewer CPUs each"
        )
    threads = max(1, round(cpus_per_worker + leave_for_tasks / per_node))
    return WorkerPlan(workers, cpus_per_worker, 1 if gpu else 0, threads, min(TASK_CPUS, room))


def hundredths(cpus: float) -> float:
    """`cpus` down to a hundredth, so that shares always fit (rounded first: 2 - 0.1 - 1.0
    is 0.8999... in floating point, which would floor to 0.89)."""
    return math.floor(round(cpus * 100, 6)) / 100
