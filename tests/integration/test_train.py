"""Ray Train: tiny runs on synthetic posters through the real training path.

The default path (early stopping, best-epoch export, per-epoch shuffling, recovery from a
killed worker, a model that learns) and every precision branch, forced on any CPU.
"""

from __future__ import annotations

import json
import threading
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tf_keras as keras
from synthetic import prepared_run

from poster_ray import loop_config, models, train, train_worker, trainer
from poster_ray.bundle import load_bundle
from poster_ray.config import PreprocessSpec, TrainConfig
from poster_ray.data import cache
from poster_ray.errors import PosterRayError
from poster_ray.evaluate import evaluate_model_dir, predict_split
from poster_ray.layout import ModelDir, RunDir
from poster_ray.metrics import classification_metrics
from poster_ray.models.views import with_test_views

TINY_CNN = {"filters": [4, 8], "kernel_size": 3, "dense_units": [16]}
# Every precision branch runs on any CPU, each in its own test: bfloat16 here (chosen on
# CPUs that have it natively; emulated elsewhere, so the model is tiny), float16 (chosen
# on GPUs) in the killed-worker run, float32 (chosen elsewhere) in the early-stopping one.
TINY = TrainConfig(
    epochs=5,
    batch_size=16,
    workers=2,
    learning_rate=3e-3,
    early_stopping=0,
    precision="bfloat16",
    hparams=TINY_CNN,
)
FLOAT32 = replace(TINY, workers=1, precision="float32")


@pytest.fixture(scope="module")
def run(tmp_path_factory, ray_session) -> RunDir:
    return prepared_run(tmp_path_factory.mktemp("train"), n=160, image_size=32)


@pytest.fixture(scope="module")
def trained(run: RunDir) -> Path:
    return train.train(run, "tiny", TINY)


def history_of(model_dir: Path) -> list[dict]:
    return ModelDir(model_dir).history.read_json()


def test_two_workers_leave_model_history_curves_checkpoints_and_bundle(run, trained):
    history = history_of(trained)
    assert [epoch["epoch"] for epoch in history] == [1, 2, 3, 4, 5]
    assert {epoch["compute_precision"] for epoch in history} == {"bfloat16"}
    for key in ("loss", "val_loss", "val_auc", "val_pr_auc", "val_micro_f1", "train_images_per_s"):
        assert np.isfinite(history[-1][key]), key
    assert train.PLACEMENT_GROUP_KEY not in history[-1]  # reported to Ray, not history
    for curve in ("curve_loss.png", "curve_precision.png"):
        assert (trained / curve).size() > 1000
    config = json.loads((trained / "train_config.json").read_text())
    assert config["workers"] == 2 and config["model"] == "custom_cnn"
    checkpoints = list((run.root.local_path / "ray" / "tiny").glob("checkpoint_*/model.keras"))
    assert checkpoints
    # Keras v3 zips, loadable in safe mode: not HDF5 under a .keras name.
    assert all(zipfile.is_zipfile(path) for path in [*checkpoints, trained / "model.keras"])
    # Checkpoints keep the bfloat16 policy (a resume goes on in it); the export is float32
    # for any hardware.
    assert conv_dtypes(models.load_model(sorted(checkpoints)[-1])) == {"bfloat16"}
    assert conv_dtypes(models.load_model(trained / "model.keras")) == {"float32"}
    assert config["trained_in"] == "bfloat16"
    # The export step writes the bundle, before any evaluation.
    bundle = load_bundle(ModelDir(trained).bundle)
    assert bundle.genres == run.load_genres()
    assert bundle.spec == PreprocessSpec(32)
    assert not ModelDir(trained).metrics.exists()


def test_a_local_ray_starts_no_preemption_watcher(trained):
    """A single machine is never drained: runtime.LOCAL_RAY_ENV turns Ray Train's watcher
    off, one actor process fewer per run."""
    import ray
    from ray.util.state import list_actors

    watchers = list_actors(
        address=ray.get_runtime_context().gcs_address,
        filters=[("class_name", "=", "PreemptionWatcher")],
        raise_on_missing_output=False,
    )
    assert watchers == []


def test_the_model_learns_genre_colours(run, trained):
    """Synthetic posters are tinted by their genres: a few epochs must rank them far
    better than the genres' training frequencies do."""
    result = evaluate_model_dir(trained, run)
    learned = result["rows"]["model @ 0.5"]["micro_ap"]
    frequencies = result["rows"]["training frequencies"]["micro_ap"]
    assert learned > frequencies + 0.15, (learned, frequencies)


def test_a_model_trained_with_the_same_settings_is_reused_not_exported_again(run, trained, capsys):
    exported = (trained / "model.keras").read_bytes()
    # Placement is not part of what a model learned: a resubmission may place it otherwise.
    assert train.train(run, "tiny", replace(TINY, workers=1, max_failures=0)) == trained
    assert "reusing model 'tiny'" in capsys.readouterr().out
    assert (trained / "model.keras").read_bytes() == exported
    assert not train.is_trained(run, "tiny", replace(TINY, learning_rate=1e-2))
    assert not train.is_trained(run, "other", TINY)


def test_a_model_trained_before_a_setting_existed_counts_as_trained_with_its_default(run, trained):
    config_file = ModelDir(trained).train_config
    recorded = config_file.read_json()
    try:
        config_file.write_json({k: v for k, v in recorded.items() if k != "pooling"})
        assert train.is_trained(run, "tiny", TINY)
        assert not train.is_trained(run, "tiny", replace(TINY, pooling="gem"))
    finally:
        config_file.write_json(recorded)


def test_another_threshold_policy_exports_the_bundle_again_and_trains_nothing(run, trained, capsys):
    exported, history = (trained / "model.keras").read_bytes(), history_of(trained)
    assert train.train(run, "tiny", replace(TINY, threshold_policy="global")) == trained
    assert "exporting its bundle again with threshold policy 'global'" in capsys.readouterr().out
    assert (trained / "model.keras").read_bytes() == exported and history_of(trained) == history
    bundle = load_bundle(ModelDir(trained).bundle)
    assert bundle.info["threshold_policy"]["policy"] == "global"
    assert len(set(bundle.thresholds)) == 1
    assert train.is_trained(run, "tiny", replace(TINY, threshold_policy="global"))
    train.train(run, "tiny", TINY)  # back to the default policy, for the tests after
    assert load_bundle(ModelDir(trained).bundle).info["threshold_policy"]["requested"] == "auto"


def test_more_test_views_export_the_bundle_again_with_thresholds_on_averaged_views(
    run, trained, capsys
):
    """The CNN's predictions averaged over the poster and its mirror image: the bundle
    records 2 test views, and its thresholds were set on those averages."""
    exported = (trained / "model.keras").read_bytes()
    try:
        assert train.train(run, "tiny", replace(TINY, test_views=2)) == trained
        assert "and 2 test view(s)" in capsys.readouterr().out
        assert (trained / "model.keras").read_bytes() == exported
        bundle = load_bundle(ModelDir(trained).bundle)
        assert bundle.test_views == 2
        _, labels, probabilities = predict_split(with_test_views(bundle.model, 2), run, "val")
        assert bundle.info["metrics"]["micro_f1@calibrated"] == pytest.approx(
            classification_metrics(labels, probabilities, bundle.thresholds, bundle.genres)[
                "micro"
            ]["f1"]
        )
    finally:
        train.train(run, "tiny", TINY)  # back to one view, for the tests after
    assert load_bundle(ModelDir(trained).bundle).test_views == 1


def conv_dtypes(model: keras.Model) -> set[str]:
    return {layer.compute_dtype for layer in model.layers if "conv" in layer.name}


# The GPU branch's policy, forced on a CPU, in the run whose worker is killed: float16
# compute and a loss-scaled optimizer, whose state survives both kinds of resume.
KILLED = replace(TINY, epochs=10, workers=1, precision="float16", in_memory=False)


@pytest.fixture(scope="module")
def killed(run) -> dict:
    """kill -9 the training worker after its first checkpoint (Ray Train restarts it from
    the last one), then rerun the finished run with one epoch more (it goes on from its
    last checkpoint). The other branch of reads_from_memory: every other run here fits
    in memory."""
    import psutil

    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(out=train.train(run, "killed", KILLED)))
    before = training_worker_pids()
    thread.start()
    deadline = time.monotonic() + 120
    while not list((run.root.local_path / "ray" / "killed").glob("checkpoint_*")):
        assert time.monotonic() < deadline and thread.is_alive(), "no checkpoint appeared"
        time.sleep(0.05)
    (victim,) = training_worker_pids() - before
    psutil.Process(victim).kill()
    replacements = set()
    while thread.is_alive():  # the restarted worker is a new process
        replacements |= training_worker_pids() - before - {victim}
        thread.join(timeout=0.05)
    history = history_of(result["out"])
    rerun = train.train(run, "killed", replace(KILLED, epochs=KILLED.epochs + 1))
    return {"history": history, "replacements": replacements, "rerun": rerun}


def test_a_killed_worker_resumes_from_the_last_checkpoint(killed):
    """The history has every epoch once, and a new worker process finished it."""
    assert [epoch["epoch"] for epoch in killed["history"]] == list(range(1, KILLED.epochs + 1))
    assert killed["replacements"], "no worker was restarted"


def test_float16_trains_with_loss_scaling_resumes_and_exports_float32(run, killed):
    """A rerun with more epochs goes on from the last checkpoint (the resume of every
    precision), its optimizer's steps and loss scale carried across both resumes."""
    out, epochs = killed["rerun"], KILLED.epochs + 1
    history = history_of(out)
    assert [epoch["epoch"] for epoch in history] == list(range(1, epochs + 1))
    assert history[:-1] == killed["history"]  # from the checkpoint, not trained again
    assert {epoch["compute_precision"] for epoch in history} == {"float16"}
    assert all(np.isfinite(epoch["val_pr_auc"]) for epoch in history)
    checkpoint = sorted((run.root.local_path / "ray" / "killed").glob("checkpoint_*/model.keras"))
    keras.mixed_precision.set_global_policy("mixed_float16")  # as a resuming worker does
    try:
        restored = keras.models.load_model(checkpoint[-1])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert isinstance(restored.optimizer, keras.mixed_precision.LossScaleOptimizer)
    steps_per_epoch = len(cache.read_split_arrays(run, "train")[0]) // KILLED.batch_size
    assert restored.optimizer.iterations.numpy() == epochs * steps_per_epoch
    assert conv_dtypes(restored) == {"float16"}
    assert conv_dtypes(models.load_model(out / "model.keras")) == {"float32"}
    assert np.isfinite(evaluate_model_dir(out, run)["micro_f1@calibrated"])


def flip_validation_labels(run: RunDir) -> None:
    """Give every validation poster the opposite genres: as the model learns the
    training posters, validation loss can only go up."""
    for path in run.cache_split("val", 32).local_path.glob("*.parquet"):
        table = pq.read_table(path)
        labels = table["labels"]
        flipped = pa.array(
            [[1 - value for value in row] for row in labels.to_pylist()], labels.type
        )
        index = table.schema.get_field_index("labels")
        pq.write_table(table.set_column(index, "labels", flipped), path)


def test_early_stopping_stops_and_exports_the_best_epoch(tmp_path_factory, ray_session):
    run = prepared_run(tmp_path_factory.mktemp("early"), n=120, image_size=32)
    flip_validation_labels(run)
    config = replace(FLOAT32, epochs=12, early_stopping=2)
    out = train.train(run, "early", config)

    history = history_of(out)
    val_loss = [epoch["val_loss"] for epoch in history]
    best = int(np.argmin(val_loss)) + 1
    assert len(history) == best + 2 < 12  # stopped 2 epochs after the best
    chosen = json.loads((out / "train_config.json").read_text())["chosen_epoch"]
    assert chosen == best
    # The exported weights are the best epoch's checkpoint, not the last epoch's.
    by_epoch = {
        history_of(path.parent)[-1]["epoch"]: path
        for path in (run.root.local_path / "ray" / "early").glob("checkpoint_*/model.keras")
    }
    exported = models.load_model(out / "model.keras").get_weights()
    for epoch, weights in ((best, True), (len(history), False)):
        saved = models.load_model(by_epoch[epoch]).get_weights()
        same = all(np.array_equal(a, b) for a, b in zip(exported, saved, strict=True))
        assert same == weights, epoch
    # A rerun of the finished run trains nothing more.
    assert len(history_of(train.train(run, "early", config))) == len(history)


def test_early_stopping_can_monitor_micro_f1():
    """val_micro_f1 is derived after each epoch: early stopping must see it (Keras warns
    and never stops on a metric it cannot find)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, (64, 3)).astype(np.float32)
    model = models.build_custom_cnn(3, image_size=16, filters=[2], dense_units=[4])
    models.compile_model(model, learning_rate=0.0)  # nothing changes: no improvement
    stopping = train_worker.ResumableEarlyStopping([], "val_micro_f1", "max", patience=1)
    history = model.fit(
        images,
        labels,
        validation_split=0.25,
        epochs=10,
        verbose=0,
        callbacks=[train_worker.DerivedMetrics(), stopping],
    )
    assert "val_micro_f1" in history.history
    assert len(history.history["loss"]) == 2


def test_patience_counts_the_epochs_before_a_resume():
    history = [{"val_loss": value} for value in (0.5, 0.4, 0.45, 0.46)]
    stopping = train_worker.ResumableEarlyStopping(history, "val_loss", "min", patience=2)
    assert stopping.stopped_before()
    stopping.on_train_begin()
    assert (stopping.best, stopping.wait) == (0.4, 2)
    assert not train_worker.ResumableEarlyStopping(
        history[:3], "val_loss", "min", 2
    ).stopped_before()


def training_worker_pids() -> set[int]:
    """The processes of this Ray's live training workers (other Rays may run here)."""
    import ray
    from ray.util.state import list_actors

    alive = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    actors = list_actors(
        address=ray.get_runtime_context().gcs_address,
        filters=alive,
        raise_on_missing_output=False,
    )
    return {actor.pid for actor in actors}


def images_of(dataset) -> list[bytes]:
    return [image.tobytes() for batch in dataset.iter_batches() for image in batch["image"]]


def test_each_worker_gets_a_disjoint_share_of_whole_blocks_and_a_new_order_each_epoch(
    run, monkeypatch
):
    monkeypatch.setattr(trainer, "SHUFFLE_BLOCK_ROWS", 2)  # many blocks even in a tiny share
    training_data = train.load_training_data(run, replace(TINY, workers=2))
    assert sorted(training_data.datasets) == ["train_0", "train_1", "val_0", "val_1"]
    share_rows = {}
    for split in ("train", "val"):
        shares = [images_of(training_data.datasets[f"{split}_{rank}"]) for rank in (0, 1)]
        rows = len(cache.read_split_arrays(run, split)[0])
        assert not set(shares[0]) & set(shares[1])
        assert len(shares[0]) + len(shares[1]) == rows  # every row, in one share
        # Whole blocks of at most 2 rows (one shorter at each of the cache's file ends).
        assert abs(len(shares[0]) - len(shares[1])) <= 4
        share_rows[split] = min(map(len, shares))  # what each worker takes per epoch
    assert (training_data.train_rows, training_data.val_rows) == tuple(share_rows.values())
    steps = trainer.step_counts(training_data, replace(TINY, batch_size=4))
    assert steps["train"] == loop_config.Steps(batch=2, steps=training_data.train_rows // 2)
    assert steps["val"].steps == training_data.val_rows // 2

    share = training_data.datasets["train_0"]
    first, second = images_of(share), images_of(share)
    assert first != second
    assert sorted(first) == sorted(second)  # the same posters, each once


def test_the_training_data_is_rebuilt_beside_workers_that_hold_their_cpus(run):
    """A block lost with its node is rebuilt by running the tasks that made it while the
    training workers hold their CPUs: every task of the lineage must fit in what they
    leave. (Ray Data's repartition asks for 1 CPU: a node lost in training hung so.)"""
    from ray.util.placement_group import placement_group, remove_placement_group

    config = train.place_workers(replace(TINY, workers=2))
    splits, _ = train.read_training_splits(run, config)  # planned, not yet run
    workers = placement_group([{"CPU": config.cpus_per_worker}] * config.workers)
    shares: dict = {}

    def run_the_lineage() -> None:
        shares.update(trainer.worker_datasets(splits["train"], splits["val"], config.workers))

    try:
        assert workers.wait(timeout_seconds=60), "the workers' CPUs were not free"
        thread = threading.Thread(target=run_the_lineage, daemon=True)
        thread.start()
        thread.join(timeout=120)
        assert shares, "a task of the training data waited for CPUs the workers hold"
    finally:
        remove_placement_group(workers)
    rows = sum(shares[f"train_{rank}"].count() for rank in (0, 1))
    assert rows == len(cache.read_split_arrays(run, "train")[0])


def test_two_workers_validate_once_on_their_shares_with_the_metrics_of_the_whole(run, trained):
    """The epoch's validation metrics are those of the model on both shares together."""
    data = train.load_training_data(run, TINY)
    steps = trainer.step_counts(data, TINY)["val"]
    used = steps.batch * steps.steps  # rows of each share one validation pass takes
    shares = [data.datasets[f"val_{rank}"].take_batch(used) for rank in (0, 1)]
    # Rank 0's batches, then rank 1's: Keras sums each metric's counts over the workers.
    images = np.concatenate([share["image"] for share in shares])
    labels = np.concatenate([share["labels"] for share in shares])
    checkpoint = sorted((run.root.local_path / "ray" / "tiny").glob("checkpoint_*"))[0]
    epoch = json.loads((checkpoint / "history.json").read_text())[-1]
    model = keras.models.load_model(checkpoint / "model.keras")  # compiled, as trained
    evaluated = model.evaluate(images, labels, batch_size=steps.batch, verbose=0, return_dict=True)
    for metric in ("precision", "recall", "auc", "pr_auc"):
        assert evaluated[metric] == pytest.approx(epoch[f"val_{metric}"], abs=1e-3), metric
    assert evaluated["loss"] == pytest.approx(epoch["val_loss"], rel=1e-2)


def test_an_in_memory_shard_pairs_every_row_with_its_labels_in_a_new_order_each_pass(run):
    shard = train.load_training_data(run, replace(TINY, workers=1)).datasets["train_0"]
    read = {}
    streamed = {
        image.tobytes(): labels.tobytes()
        for batch in shard.iter_batches(batch_format="numpy")
        for image, labels in zip(batch["image"], batch["labels"], strict=True)
    }
    rows, batch = shard.count(), 4
    one_pass_of_batches = train_worker.arrays_dataset(
        shard, "image", batch, shuffle=True, read=read
    )
    batches = iter(one_pass_of_batches.repeat())
    assert read["rows_read"] == rows and read["bytes_read"] > rows * 32 * 32 * 3

    def one_pass() -> list[tuple[bytes, bytes]]:
        return [
            (image.tobytes(), labels.tobytes())
            for images, labels in (next(batches) for _ in range(rows // batch))
            for image, labels in zip(images.numpy(), labels.numpy(), strict=True)
        ]

    first, second = one_pass(), one_pass()
    assert first != second
    assert len(set(first)) == rows // batch * batch  # no row twice in a pass
    assert set(first) <= set(streamed.items()) and set(second) <= set(streamed.items())


@pytest.mark.parametrize(
    ("forced", "shard_mb", "workers_on_node", "expected"),
    [(None, 100, 2, True), (None, 300, 2, False), (True, 10**6, 1, True), (False, 1, 1, False)],
)
def test_workers_hold_their_shard_in_memory_when_told_or_when_it_fits(
    monkeypatch, forced, shard_mb, workers_on_node, expected
):
    monkeypatch.setattr(train_worker.resources, "available_memory", lambda: 1000 << 20)
    assert (
        train_worker.reads_from_memory(forced, shard_mb << 20, workers_on_node) is expected
    )  # a quarter of 1000 MB is the budget of all the node's workers together


def test_a_model_too_deep_for_the_image_size_fails_in_the_driver(run):
    config = replace(TINY, hparams={})  # the seed's 4 blocks of 5x5 need ~94 px
    with pytest.raises(PosterRayError, match="cannot build custom_cnn for 32x32"):
        train.train(run, "too-deep", config)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"workers": 0}, "--workers must be at least 1"),
        ({"epochs": 0}, "--epochs must be at least 1"),
        ({"batch_size": 1}, "--batch-size 1 is smaller than --workers 2"),
        ({"precision": "int8"}, "unknown precision 'int8'"),
        ({"workers": 3, "cpus_per_worker": 1.0}, "3 workers of 1 CPUs do not fit"),
        ({"more_backbones": ["efficientnet_lite0"]}, "needs a pretrained model, not custom_cnn"),
        (
            {"model": "efficientnet_lite0", "more_backbones": ["vgg19"]},
            "unknown backbone 'vgg19'",
        ),
        (
            {"model": "vgg16", "more_backbones": ["resnet50"], "weights": "vgg16.h5"},
            "--weights FILE holds one backbone's weights",
        ),
    ],
)
def test_bad_settings_fail_before_training_starts(run, change, message):
    with pytest.raises(PosterRayError, match=message):
        train.train(run, "bad", replace(TINY, **change))


def test_keras_policy_is_left_float32_by_the_driver(run):
    """The driver only builds the model to check it; training precision is the workers'."""
    train.check_model_builds(run, replace(TINY, precision="bfloat16"))
    assert keras.mixed_precision.global_policy().name == "float32"
