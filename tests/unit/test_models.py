"""Model builders: architectures, weights resolution, precision and safe-mode round trips."""

import dataclasses

import numpy as np
import pytest
import tf_keras as keras

from poster_ray import models
from poster_ray.config import TrainConfig
from poster_ray.errors import PosterRayError
from poster_ray.hparams import point_settings

GENRES = 24
CNN_SIZE = 80  # about the smallest input the default CNN's four valid conv blocks accept
VGG_SIZE = 32  # the smallest input VGG16 accepts


@pytest.fixture(autouse=True)
def float32_policy():
    """Leave the global dtype policy as float32 whatever a test set it to."""
    yield
    keras.mixed_precision.set_global_policy("float32")
    keras.backend.clear_session()


def pixels(batch, size):
    return np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def test_custom_cnn_has_the_seed_reports_parameter_count():
    model = models.build_custom_cnn(GENRES, image_size=250)
    assert model.name == "custom_cnn"
    assert model.count_params() == 1_168_952


@pytest.mark.parametrize(
    "hparams",
    [{"filters": (8, 16, 32, 32)}, {"kernel_size": 3}, {"dense_units": (32,)}],
)
def test_hyperparameters_change_the_architecture(hparams):
    default = models.build_custom_cnn(GENRES, image_size=CNN_SIZE).count_params()
    assert models.build_custom_cnn(GENRES, image_size=CNN_SIZE, **hparams).count_params() != default


MODELS = [("custom_cnn", CNN_SIZE, {}), ("vgg16", VGG_SIZE, {"weights": "none"})]


@pytest.mark.parametrize(("name", "size", "hparams"), MODELS)
def test_outputs_are_probabilities_per_genre_from_uint8_pixels(name, size, hparams):
    model = models.build_model(name, num_genres=5, image_size=size, **hparams)
    predictions = model.predict(pixels(3, size), verbose=0)
    assert predictions.shape == (3, 5)
    assert ((predictions >= 0) & (predictions <= 1)).all()


@pytest.mark.parametrize(("name", "size", "hparams"), MODELS)
def test_saved_model_loads_in_safe_mode_with_identical_predictions(tmp_path, name, size, hparams):
    model = models.build_model(name, num_genres=5, image_size=size, **hparams)
    model.save(tmp_path / "model.keras")
    loaded = models.load_model(tmp_path / "model.keras")
    batch = pixels(2, size)
    np.testing.assert_array_equal(loaded.predict(batch, verbose=0), model.predict(batch, verbose=0))


def test_bfloat16_model_loads_with_float32_outputs(tmp_path):
    model = models.build_model("custom_cnn", 5, CNN_SIZE, precision="bfloat16")
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert model.get_layer(index=2).compute_dtype == "bfloat16"
    model.save(tmp_path / "model.keras")
    keras.mixed_precision.set_global_policy("float32")

    loaded = models.load_model(tmp_path / "model.keras")
    assert loaded.get_layer(index=2).compute_dtype == "bfloat16"
    assert loaded(pixels(2, CNN_SIZE)).dtype == "float32"


def test_build_model_resets_the_precision_policy():
    models.build_model("custom_cnn", 5, CNN_SIZE, precision="bfloat16")
    model = models.build_model("custom_cnn", 5, CNN_SIZE)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert model.get_layer(index=2).compute_dtype == "float32"


def genres_layer(model: keras.Model) -> keras.layers.Layer:
    """The sigmoid output layer, wherever it is nested (a transfer model's head)."""
    return next(layer for layer in model.submodules if layer.name == "genres")


@pytest.mark.parametrize("name", ["custom_cnn", "vgg16"])
@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_with_precision_keeps_the_weights_and_the_float32_head(name, precision):
    size, hparams = (CNN_SIZE, {}) if name == "custom_cnn" else (VGG_SIZE, {"weights": "none"})
    trained = models.build_model(name, 5, size, **hparams)
    reduced = models.with_precision(trained, precision)
    convolutions = [layer for layer in reduced.submodules if isinstance(layer, keras.layers.Conv2D)]
    assert convolutions and {layer.compute_dtype for layer in convolutions} == {precision}
    assert genres_layer(reduced).compute_dtype == "float32"
    batch = pixels(4, size)
    np.testing.assert_allclose(
        reduced.predict(batch, verbose=0), trained.predict(batch, verbose=0), atol=0.05
    )
    back = models.with_precision(reduced, "float32")
    assert {
        layer.compute_dtype for layer in back.submodules if isinstance(layer, keras.layers.Layer)
    } == {"float32"}
    np.testing.assert_array_equal(back.predict(batch, verbose=0), trained.predict(batch, verbose=0))


def test_a_model_that_computes_in_the_precision_already_is_not_cloned():
    """Cloning a backbone takes seconds: a float32 model exported as float32 stays the
    same object, and one computing in bfloat16 comes back as float32 again."""
    trained = models.build_model("vgg16", 5, VGG_SIZE, weights="none")
    assert models.with_precision(trained, "float32") is trained
    reduced = models.with_precision(trained, "bfloat16")
    assert models.with_precision(reduced, "bfloat16") is reduced
    assert models.with_precision(reduced, "float32") is not reduced


def test_inference_function_matches_predict_for_any_batch_size_and_from_threads():
    """The traced function the model actors call: predict's outputs for every batch
    size, and the same answers when two threads call it at once."""
    from concurrent.futures import ThreadPoolExecutor

    model = models.build_custom_cnn(GENRES, image_size=CNN_SIZE, filters=(4, 4), dense_units=(8,))
    images = pixels(70, CNN_SIZE)
    expected = model.predict(images, verbose=0)
    infer = models.inference_function(model)
    for batch in (1, 5, 64):
        got = infer(images[:batch])
        assert got.shape == (batch, GENRES) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected[:batch], rtol=1e-5, atol=1e-6)
    with ThreadPoolExecutor(2) as pool:
        halves = list(pool.map(infer, [images[:35], images[35:]] * 4))
    for first, second in zip(halves[::2], halves[1::2], strict=True):
        np.testing.assert_allclose(np.concatenate([first, second]), expected, rtol=1e-5, atol=1e-6)


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(PosterRayError, match="custom_cnn, efficientnet_lite0"):
        models.build_model("resnet", 5, CNN_SIZE)


def test_load_missing_model_names_the_file(tmp_path):
    with pytest.raises(PosterRayError, match="missing.keras"):
        models.load_model(tmp_path / "missing.keras")


def test_compile_model_tracks_precision_recall_and_both_aucs():
    model = models.build_model("custom_cnn", 5, CNN_SIZE)
    models.compile_model(model, learning_rate=0.01)
    assert model.optimizer.learning_rate.numpy() == pytest.approx(0.01)
    model.evaluate(pixels(2, CNN_SIZE), np.eye(2, 5), verbose=0)
    assert set(model.metrics_names) == {"loss", "precision", "recall", "auc", "pr_auc"}


def test_compile_model_scales_the_loss_under_float16():
    # compile_model relies on Model.compile to add loss scaling; check that it does.
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = models.build_custom_cnn(5, image_size=CNN_SIZE)
    models.compile_model(model)
    assert isinstance(model.optimizer, keras.mixed_precision.LossScaleOptimizer)


@pytest.mark.parametrize(("name", "size"), [("custom_cnn", 250), ("efficientnet_lite0", 64)])
def test_the_default_point_is_the_model_train_builds_when_nothing_is_set(name, size):
    """Tuning's first trial is the untuned model: same layers, same training settings."""
    point = point_settings(name, models.DEFAULT_POINTS[name])
    hparams = point.pop("hparams")
    assert dataclasses.replace(TrainConfig(), **point) == TrainConfig()
    weights = {} if name == "custom_cnn" else {"weights": "none"}
    untuned = models.build_model(name, GENRES, size, **weights)
    tuned = models.build_model(name, GENRES, size, **weights, **hparams)
    assert layer_shapes(tuned) == layer_shapes(untuned)
    assert tuned.count_params() == untuned.count_params()


def layer_shapes(model: keras.Model) -> list:
    return [(type(layer).__name__, layer.output_shape) for layer in model.layers]
