"""Ray Train's backend for MultiWorkerMirroredStrategy, without TensorFlow in the driver's
Train controller.

Ray's own `TensorflowConfig` does the same (TF_CONFIG: every worker's address and its
index), but it lives in `ray.train.tensorflow`, whose `__init__` imports TensorFlow: the
controller that unpickles it then loads TensorFlow for nothing: about 6 s of a 2-core
machine per training run (bench/train_start_up.py: a run that reports once, 13.2 s with
it, 6.7 s without).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass

import ray
from ray.train.backend import Backend, BackendConfig


@dataclass
class MultiWorkerConfig(BackendConfig):
    """Set TF_CONFIG on every worker of the group before the train loop starts."""

    @property
    def backend_cls(self) -> type[Backend]:
        return MultiWorkerBackend


class MultiWorkerBackend(Backend):
    """Ray Train calls `on_start` once a run's workers are up, before its train loop:
    each worker's address first, then every worker learns them all and its own rank."""

    def on_start(self, worker_group, backend_config: MultiWorkerConfig) -> None:
        addresses = worker_group.execute(worker_address)
        ray.get(
            [
                worker_group.execute_single_async(rank, set_tf_config, addresses, rank)
                for rank in range(len(worker_group))
            ]
        )


def worker_address() -> str:
    """This worker's node address and a port free on it, for TensorFlow's collectives."""
    host = ray.util.get_node_ip_address()
    ipv6 = ":" in host
    with socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET) as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    return f"[{host}]:{port}" if ipv6 else f"{host}:{port}"


def set_tf_config(addresses: list[str], rank: int) -> None:
    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": rank}}
    )
