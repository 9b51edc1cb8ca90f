"""Decoding and prediction are two Ray Data stages that run at the same time, sized from the
resources they are given; never one fused actor that decodes, then predicts."""

from __future__ import annotations

import os
import time

import pandas as pd
import pytest
from infer_support import SPEC, make_archive, make_bundle

from poster_ray.errors import PosterRayError
from poster_ray.infer import pipeline
from poster_ray.infer.inputs import resolve_inputs
from poster_ray.infer.pipeline import InferencePlan, inference_dataset, plan_inference
from poster_ray.resources import Node, alive_nodes


def test_on_two_cores_one_actor_with_both_cores_leaves_room_for_a_decode_task():
    plan = plan_inference([Node("n", 2.0, 0.0)])
    assert plan == InferencePlan(1, 1, 1.4, 0, threads=2, decode_cpus=0.5)
    assert plan.cpus_per_actor + plan.decode_cpus <= 2.0  # else decoding never runs


def test_the_pool_autoscales_to_one_actor_per_node_unless_fixed():
    nodes = [Node("head", 0.0, 0.0), Node("a", 8.0, 0.0), Node("b", 8.0, 0.0)]
    grown = plan_inference(nodes)
    assert (grown.min_actors, grown.max_actors, grown.cpus_per_actor, grown.threads) == (
        1,
        2,
        5.9,
        8,
    )
    assert 8.0 - grown.cpus_per_actor >= 2.0  # a quarter of the node for decode tasks
    fixed = plan_inference(nodes, workers=4)
    assert (fixed.min_actors, fixed.max_actors, fixed.cpus_per_actor, fixed.threads) == (
        4,
        4,
        2.95,
        4,
    )


def test_gpu_actors_take_one_gpu_and_one_cpu_each():
    nodes = [Node("cpu", 16.0, 0.0), Node("gpu", 8.0, 4.0)]
    plan = plan_inference(nodes, gpu=True)
    assert (plan.min_actors, plan.max_actors, plan.cpus_per_actor, plan.gpus_per_actor) == (
        1,
        4,
        1.0,
        1,
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cpus_per_worker": 0.5}, "Ray Data would fuse decoding into the model actor"),
        ({"cpus_per_worker": 3.0}, "do not fit"),
        ({"cpus_per_worker": 1.9}, "leave 0.1 of a 2-CPU node to the tasks that feed them"),
        ({"gpu": True}, "no Ray node with a GPU"),
    ],
)
def test_plans_that_cannot_work_are_one_clear_error(kwargs, message):
    with pytest.raises(PosterRayError, match=message):
        plan_inference([Node("n", 2.0, 0.0)], **kwargs)


def test_on_1_cpu_nodes_a_decode_task_fits_beside_each_model_actor():
    plan = plan_inference([Node("a", 1.0, 0.0), Node("b", 1.0, 0.0)])
    assert (plan.max_actors, plan.cpus_per_actor, plan.decode_cpus) == (2, 0.4, 0.5)
    assert plan.cpus_per_actor + plan.decode_cpus <= 1.0


def test_decode_tasks_and_model_actors_are_separate_stages_that_overlap(
    ray_session, tmp_path, monkeypatch
):
    """The executed plan names a task operator for decoding and an actor operator for the
    model, and the two ran at the same time in different processes."""
    log = tmp_path / "intervals.log"
    log.touch()

    def append(line: str) -> None:
        with open(log, "a") as file:
            file.write(line + "\n")

    def logged_decode(batch, spec):
        if "decode" in log.read_text():  # a later block: wait until the model is running
            deadline = time.time() + 120  # the actor imports TensorFlow first
            while "model-start" not in log.read_text() and time.time() < deadline:
                time.sleep(0.05)
        started = time.time()
        batch = pipeline.decode_batch(batch, spec)
        time.sleep(0.3)  # long enough for the other stage to be seen running meanwhile
        append(f"decode {os.getpid()} {started} {time.time()}")
        return batch

    class LoggedModel(pipeline.ModelActor):
        def __call__(self, batch):
            append("model-start")
            started = time.time()
            rows = super().__call__(batch)
            time.sleep(0.3)
            append(f"model {os.getpid()} {started} {time.time()}")
            return rows

    monkeypatch.setattr(pipeline, "decode_batch", logged_decode)
    monkeypatch.setattr(pipeline, "ModelActor", LoggedModel)
    monkeypatch.setattr(pipeline, "ROWS_PER_DECODE_TASK", 4)
    archive = make_archive(tmp_path / "archive")
    paths = resolve_inputs(str(archive))
    records = pd.DataFrame({"path": paths, "chunk": [0] * len(paths)})
    plan = plan_inference(alive_nodes())
    bundle = make_bundle(tmp_path)
    dataset = inference_dataset(records, str(bundle), SPEC, plan, 4, "float32", False)
    rows = sum(
        len(table) for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow")
    )
    assert rows == len(paths)

    stats = dataset.stats()
    assert "MapBatches(logged_decode)->" not in stats  # no fused decode->model operator
    assert "Operator 1 MapBatches(logged_decode)" in stats
    assert "Operator 2 MapBatches(LoggedModel)" in stats

    intervals = [line.split() for line in log.read_text().splitlines() if line != "model-start"]
    decodes = [
        (pid, float(start), float(end)) for kind, pid, start, end in intervals if kind == "decode"
    ]
    models = [
        (pid, float(start), float(end)) for kind, pid, start, end in intervals if kind == "model"
    ]
    assert {pid for pid, _, _ in decodes}.isdisjoint(pid for pid, _, _ in models)
    assert any(
        start < model_end and model_start < end
        for _, start, end in decodes
        for _, model_start, model_end in models
    ), "no decode task ran while the model actor was busy"
