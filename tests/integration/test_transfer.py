"""Pretrained backbones, the head, losses, feature caching and fine-tuning."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import tf_keras as keras
from synthetic import prepared_run

from poster_ray import models, train
from poster_ray.bundle import load_bundle
from poster_ray.config import TrainConfig, TuneSettings
from poster_ray.data.cache import read_split_arrays
from poster_ray.errors import PosterRayError
from poster_ray.evaluate import predict_split
from poster_ray.features import ensure_features, ensure_joined_features
from poster_ray.metrics import classification_metrics
from poster_ray.models import backbones, losses, transfer
from poster_ray.models.views import with_test_views
from poster_ray.tune.experiment import tune_model

GENRES = 5
# The module's model trains two backbones' features of two views, then fine-tunes: beside
# another module's Ray Train runs on the same 2 cores, its first test waits on all of it.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(autouse=True)
def float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")
    keras.backend.clear_session()


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """An empty KERAS_HOME, and a get_file that fails as it would offline."""

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network in tests")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras.utils, "get_file", offline)
    return tmp_path


def pixels(batch: int, size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


# ---------------------------------------------------------------- backbones


@pytest.mark.parametrize("name", list(backbones.BACKBONES))
def test_every_backbone_takes_uint8_posters_and_pools_features(name):
    base = transfer.build_backbone(name, 64, weights="none")
    features = base.predict(pixels(2, 64), verbose=0)
    assert features.shape[0] == 2 and features.ndim == 2
    assert not base.trainable_weights  # frozen by default


@pytest.mark.parametrize(
    ("name", "blocks", "first_trainable"),
    [("vgg16", 1, "block5_conv1"), ("resnet50", 1, "conv5_block1_1_conv")],
)
def test_fine_tuning_unfreezes_only_the_top_blocks(name, blocks, first_trainable):
    base = transfer.build_backbone(name, 64, weights="none", trainable_blocks=blocks)
    trainable = [layer.name for layer in base.layers if layer.trainable and layer.weights]
    assert trainable[0] == first_trainable
    prefix = backbones.BACKBONES[name].blocks(base)[-1]
    assert all(layer.split("_")[0] == prefix for layer in trainable)


def test_efficientnet_lite_top_block_is_its_head_convolution():
    base = transfer.build_backbone("efficientnet_lite0", 64, weights="none", trainable_blocks=2)
    trainable = {layer.name.split("_")[0] for layer in base.layers if layer.trainable}
    assert trainable == {"block15", "head"}


def test_frozen_efficientnet_blocks_keep_their_batchnorm_statistics_in_fit():
    base = transfer.build_backbone("efficientnet_lite0", 64, weights="none", trainable_blocks=4)
    trained = {layer.name.split("_")[0] for layer in base.layers if layer.trainable_weights}
    assert trained == {"block13", "block14", "block15", "head"}
    frozen_bn, trained_bn = base.get_layer("block12_project_bn"), base.get_layer("head_bn")
    before = frozen_bn.moving_mean.numpy(), trained_bn.moving_mean.numpy()
    base(np.full((2, 64, 64, 3), 200, np.uint8), training=True)
    np.testing.assert_array_equal(frozen_bn.moving_mean.numpy(), before[0])  # inference mode
    assert not np.array_equal(trained_bn.moving_mean.numpy(), before[1])


def test_trainable_blocks_out_of_range_is_a_user_error():
    with pytest.raises(PosterRayError, match="trainable_blocks must be between 0 and 5"):
        transfer.build_backbone("vgg16", 32, weights="none", trainable_blocks=6)


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(PosterRayError, match="nope.h5"):
        backbones.resolve_keras_weights("vgg16", str(tmp_path / "nope.h5"))


def test_imagenet_offline_says_where_to_put_which_file(keras_home):
    with pytest.raises(PosterRayError) as raised:
        backbones.resolve_keras_weights("vgg16", "imagenet")
    message = str(raised.value)
    app = backbones.KERAS_APPLICATIONS["vgg16"]
    assert app.weights_file in message and str(keras_home / "models") in message
    assert f"{backbones.KERAS_WEIGHTS_URL}vgg16/{app.weights_file}" in message
    assert "EfficientNet-Lite" in message and "\n" not in message


@pytest.mark.parametrize("how", ["imagenet", "path"])
def test_keras_weights_are_loaded_and_made_rgb(keras_home, how):
    """A Keras application's weights file, from the Keras cache or a path: every weight
    loads, and RGB posters through our scaling equal Keras' own caffe preprocessing."""
    app = backbones.KERAS_APPLICATIONS["vgg16"]
    weights_file = keras_home / "models" / app.weights_file
    weights_file.parent.mkdir()
    source = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    source.save_weights(str(weights_file))

    base = backbones.keras_application(
        "vgg16", 32, "imagenet" if how == "imagenet" else str(weights_file)
    )
    kernel, bias = base.get_layer("block1_conv1").get_weights()
    source_kernel, source_bias = source.get_layer("block1_conv1").get_weights()
    np.testing.assert_array_equal(kernel, source_kernel[:, :, ::-1, :])
    np.testing.assert_array_equal(bias, source_bias)
    batch = pixels(2, 32).astype("float32")
    expected = source(keras.applications.vgg16.preprocess_input(batch.copy()))
    np.testing.assert_allclose(base(batch), expected, rtol=1e-4, atol=1e-4)  # the last map


# ---------------------------------------------------------------- the transfer model


def test_transfer_model_is_backbone_then_a_head_that_stands_alone(tmp_path):
    model = models.build_model(
        "efficientnet_lite0", GENRES, 64, weights="none", units=16, dropout=0.2
    )
    head = model.get_layer("head")
    assert head.input_shape == (None, 1280) and head.output_shape == (None, GENRES)
    assert models.native_size("efficientnet_lite0") == 224
    model.save(tmp_path / "model.keras")
    loaded = models.load_model(tmp_path / "model.keras")  # safe mode
    batch = pixels(3, 64)
    np.testing.assert_allclose(loaded.predict(batch, verbose=0), model.predict(batch, verbose=0))


def test_more_backbones_see_the_same_posters_and_join_their_features_in_order(tmp_path):
    model = models.build_model(
        "efficientnet_lite0", GENRES, 64, weights="none", more_backbones=["vgg16"], units=16
    )
    first, second = model.get_layer("backbone"), model.get_layer("backbone_vgg16")
    head = model.get_layer("head")
    assert head.input_shape == (None, 1280 + 512)
    batch = pixels(2, 64)
    joined = np.concatenate([first.predict(batch, verbose=0), second.predict(batch, verbose=0)], 1)
    expected = head.predict(joined, verbose=0)
    np.testing.assert_allclose(model.predict(batch, verbose=0), expected, atol=1e-5)
    model.save(tmp_path / "model.keras")
    loaded = models.load_model(tmp_path / "model.keras")  # safe mode
    np.testing.assert_allclose(loaded.predict(batch, verbose=0), expected, atol=1e-5)


def test_a_backbone_named_twice_is_refused():
    with pytest.raises(PosterRayError, match="a backbone is named twice"):
        models.backbone_models("efficientnet_lite0", ["efficientnet_lite0"])


def test_augmentation_trains_only():
    model = models.build_model("efficientnet_lite0", GENRES, 64, weights="none", augment=True)
    augmentation = model.get_layer("augmentation")
    batch = pixels(4, 64).astype("float32")
    np.testing.assert_array_equal(augmentation(batch, training=False), batch)
    assert not np.allclose(augmentation(batch, training=True), batch)


# ---------------------------------------------------------------- losses


def test_weighted_cross_entropy_weighs_positives_only():
    y_true = np.array([[1.0, 0.0], [0.0, 1.0]], dtype="float32")
    y_prob = np.array([[0.7, 0.2], [0.4, 0.9]], dtype="float32")
    plain = keras.losses.BinaryCrossentropy()(y_true, y_prob).numpy()
    assert losses.WeightedBinaryCrossentropy([1.0, 1.0])(y_true, y_prob).numpy() == (
        pytest.approx(plain, rel=1e-5)
    )
    heavier = losses.WeightedBinaryCrossentropy([3.0, 1.0])(y_true, y_prob).numpy()
    # Only the positive of genre 0 (p = 0.7) counts 3 times: 2 * -log(0.7) more, over 4.
    assert heavier - plain == pytest.approx(2 * -np.log(0.7) / 4, rel=1e-4)


def test_asymmetric_loss_ignores_easy_negatives_and_keeps_positives():
    loss = losses.AsymmetricLoss(gamma_neg=4.0, gamma_pos=0.0, clip=0.05)
    easy_negative = loss(np.zeros((1, 1), "float32"), np.full((1, 1), 0.04, "float32"))
    assert easy_negative.numpy() == pytest.approx(0.0, abs=1e-7)
    positive = loss(np.ones((1, 1), "float32"), np.full((1, 1), 0.7, "float32"))
    assert positive.numpy() == pytest.approx(-np.log(0.7), rel=1e-4)


def test_positive_weights_favour_rare_genres_within_a_cap():
    labels = np.zeros((100, 3), dtype=np.uint8)
    labels[:50, 0], labels[:1, 1], labels[:, 2] = 1, 1, 1
    weights = losses.positive_weights(labels, cap=5.0)
    assert weights[0] == pytest.approx(1.0) and weights[1] == 5.0 and weights[2] == 1.0


@pytest.mark.parametrize("loss", models.LOSSES)
def test_a_model_compiled_with_each_loss_checkpoints_and_reloads(tmp_path, loss):
    model = models.build_model("custom_cnn", GENRES, 80, filters=(4,), dense_units=(8,))
    models.compile_model(model, 1e-3, loss, [2.0] * GENRES)
    labels = np.eye(GENRES)[:4]
    model.fit(pixels(4, 80), labels, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras", save_format="keras_v3")
    restored = keras.models.load_model(tmp_path / "model.keras")
    assert np.isfinite(restored.evaluate(pixels(4, 80), labels, verbose=0)[0])


# ---------------------------------------------------------------- feature caching


@pytest.fixture(scope="module")
def run(tmp_path_factory, ray_session):
    return prepared_run(tmp_path_factory.mktemp("transfer"), n=100, image_size=32)


# One worker: two are test_train's; a second would import TensorFlow and trace the
# backbone's gradients once more. Two backbones and not the default pooling, so that
# they are the choices that travel from the settings to the features, the head, the
# joined model and fine-tuning.
LITE = TrainConfig(
    model="efficientnet_lite0",
    more_backbones=["efficientnet_lite1"],
    pooling="avg+max",
    views=2,
    test_views=2,
    input_size=64,
    epochs=3,
    batch_size=16,
    workers=1,
    early_stopping=0,
    hparams={"units": 32},
)


@pytest.fixture(scope="module")
def head_model(run):
    return train.train(run, "lite", LITE)


BACKBONES = [LITE.model, *LITE.more_backbones]


def lite_features(run):
    return ensure_joined_features(run, BACKBONES, 64, pooling=LITE.pooling)


def lite_training_features(run):
    return train.feature_cache(run, LITE)


def test_features_are_cached_once_and_reused(run, head_model):
    cache = lite_features(run)
    assert cache.location == run.features("efficientnet_lite0+efficientnet_lite1", 64, "avg+max")
    markers = [
        ensure_features(run, name, 64, pooling=LITE.pooling).location / "_features.json"
        for name in BACKBONES
    ]
    marker = cache.location / "_features.json"
    written = [path.read_json() for path in [marker, *markers]]
    assert [entry["dims"] for entry in written] == [2 * 2 * 1280, 2 * 1280, 2 * 1280]
    assert lite_features(run).location == cache.location
    assert [path.read_json() for path in [marker, *markers]] == written  # not computed again
    features, labels = cache.arrays("val")
    assert features.shape == (len(labels), 4 * 1280) and features.dtype == np.float32
    # Each poster's row is the first backbone's features, then the second's.
    first, _ = ensure_features(run, BACKBONES[0], 64, pooling=LITE.pooling).arrays("val")
    assert any(np.array_equal(features[0, : 2 * 1280], row) for row in first)


def test_a_second_view_of_each_training_poster_is_cached_and_trained_on(run, head_model):
    """View 1 is the mirror image: its cache holds the backbone's features of each
    training poster mirrored, and the head's training split holds both views."""
    mirrored = ensure_features(run, BACKBONES[0], 64, pooling=LITE.pooling, view=1)
    assert mirrored.location == run.features(BACKBONES[0], 64, LITE.pooling, view=1)
    assert [part.name for part in mirrored.location.iterdir()] == ["_features.json", "split=train"]
    from poster_ray.data.tables import read_table

    cached = read_table(mirrored.location / "split=train", ["id"])["id"].tolist()
    features, _ = mirrored.arrays("train")
    ids, images, _ = read_split_arrays(run, "train", 64)
    assert sorted(cached) == sorted(ids)
    backbone = transfer.build_backbone(BACKBONES[0], 64, pooling=LITE.pooling)
    expected = backbone.predict(images[:, :, ::-1], verbose=0)
    order = {poster_id: row for row, poster_id in enumerate(ids)}
    np.testing.assert_allclose(features, expected[[order[i] for i in cached]], atol=1e-3)
    training = lite_training_features(run)
    assert len(training.arrays("train")[0]) == 2 * len(ids)
    assert len(training.arrays("val")[0]) == len(read_split_arrays(run, "val", 64)[0])


def test_the_bundle_averages_its_test_views(run, head_model):
    bundle = load_bundle(head_model / "bundle")
    assert bundle.test_views == 2
    metrics = json.loads((head_model / "bundle" / "bundle.json").read_text())["metrics"]
    model = with_test_views(bundle.model, 2)
    _, labels, probabilities = predict_split(model, run, "val")
    assert metrics["posters"] == len(labels)  # thresholds set on the averaged predictions
    assert metrics["micro_f1@calibrated"] == pytest.approx(
        classification_metrics(labels, probabilities, bundle.thresholds, bundle.genres)["micro"][
            "f1"
        ]
    )


def test_tuning_searches_the_views_each_trial_on_its_own_features(run, head_model):
    """Two trials, the untuned head on 2 views (LITE's) and on the posters alone: each
    reads its own training data, and the best exports with its views. The base fine-tunes,
    as the full profile's does: the trials still train heads on cached features."""
    default = models.DEFAULT_POINTS[LITE.model]
    settings = TuneSettings(
        trials=2,
        max_epochs=1,
        feature_choices={"views": [1, 2]},
        start_points=[default, {**default, "views": 1}],
    )
    out = tune_model(run, "views", replace(LITE, fine_tune_blocks=1), settings)
    trials = pd.read_csv(out / "trials.csv").set_index("views")
    assert sorted(trials.index) == [1, 2]
    ratio = trials.loc[2, "images_per_epoch"] / trials.loc[1, "images_per_epoch"]
    assert 1.8 <= ratio <= 2.2  # twice the rows, less what a last partial batch drops
    best = trials["best"].idxmax()  # val_pr_auc, the default objective
    exported = json.loads((out / "train_config.json").read_text())
    assert (exported["views"], exported["fine_tune_blocks"]) == (best, 0)


def test_the_exported_model_is_the_head_on_the_backbone_from_uint8_posters(run, head_model):
    """Joined model on decoded posters == the head trained on cached features."""
    model = models.load_model(head_model / "model.keras")
    assert model.input_shape == (None, 64, 64, 3)
    ids, images, _ = read_split_arrays(run, "val", 64)
    features, _ = lite_features(run).arrays("val")
    head = model.get_layer("head")
    # The cache's row order is the decoded cache's: match by id.
    from poster_ray.data.tables import read_table

    cached_ids = read_table(lite_features(run).location / "split=val", ["id"])["id"]
    order = {poster_id: row for row, poster_id in enumerate(cached_ids)}
    expected = head.predict(features[[order[poster_id] for poster_id in ids]], verbose=0)
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-4)
    history = json.loads((head_model / "history.json").read_text())
    assert [epoch["epoch"] for epoch in history] == [1, 2, 3]


def test_fine_tuning_starts_from_the_head_and_changes_only_the_top_block(run, head_model):
    config = replace(
        LITE,
        fine_tune_blocks=1,
        fine_tune_epochs=1,
        fine_tune_learning_rate=1e-3,
        fine_tune_backbone_rate=0.1,  # the two-rate optimizer, under Ray Train's strategy
    )
    out = train.fine_tune(run, "lite", train.place_workers(config), head_model)
    history = json.loads((out / "history.json").read_text())
    assert [epoch["epoch"] for epoch in history] == [1, 2, 3, 4]  # head, then fine-tuning
    tuned = models.load_model(out / "model.keras")
    pretrained = transfer.build_backbone("efficientnet_lite0", 64, pooling=LITE.pooling)
    backbone = tuned.get_layer("backbone")  # the first; the second's top block trains too
    assert np.array_equal(
        backbone.get_layer("block3_dwconv").get_weights()[0],
        pretrained.get_layer("block3_dwconv").get_weights()[0],
    )
    assert not np.array_equal(
        backbone.get_layer("head_conv").get_weights()[0],
        pretrained.get_layer("head_conv").get_weights()[0],
    )
