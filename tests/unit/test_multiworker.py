"""The Train run's backend and its worker config: TF_CONFIG for every worker, and nothing
that loads TensorFlow into Ray Train's controller."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

from poster_ray.config import TrainConfig
from poster_ray.loop_config import LOOP_CONFIG_KEY, ModelInputs, Steps, TrainLoopConfig
from poster_ray.multiworker import MultiWorkerConfig, set_tf_config, worker_address


def test_each_worker_gets_every_address_and_its_own_index(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    addresses = ["10.0.0.1:41000", "10.0.0.2:41001"]
    set_tf_config(addresses, 1)
    assert json.loads(os.environ["TF_CONFIG"]) == {
        "cluster": {"worker": addresses},
        "task": {"type": "worker", "index": 1},
    }


def test_a_worker_address_is_its_node_and_a_free_port(monkeypatch):
    monkeypatch.setattr("ray.util.get_node_ip_address", lambda: "127.0.0.1")
    host, port = worker_address().rsplit(":", 1)
    assert host == "127.0.0.1" and 1024 <= int(port) < 65536
    monkeypatch.setattr("ray.util.get_node_ip_address", lambda: "::1")
    assert worker_address().startswith("[::1]:")


def test_what_the_train_controller_unpickles_does_not_import_tensorflow():
    loop = TrainLoopConfig(
        settings=TrainConfig(),
        inputs=ModelInputs("image", (32, 32, 3), 25),
        loss_weights=[1.0] * 25,
        train_steps=Steps(16, 4),
        val_steps=Steps(16, 1),
        dataset_bytes={"train_0": 1},
    )
    pickled = pickle.dumps(({LOOP_CONFIG_KEY: loop}, MultiWorkerConfig()))
    unpickle = (
        "import pickle, sys; config, backend = pickle.loads(sys.stdin.buffer.read()); "
        "backend.backend_cls; print(sorted(m for m in sys.modules if m.startswith('tensorflow')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", unpickle], input=pickled, capture_output=True, check=True
    )
    assert out.stdout.decode().strip() == "[]"
