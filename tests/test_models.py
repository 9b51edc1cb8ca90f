"""Model builders: architectures, weights resolution, precision and safe-mode round trips."""

import numpy as np
import pytest
import tf_keras as keras

from poster_ray import models
from poster_ray.errors import PosterRayError
from poster_ray.models import vgg16

GENRES = 24
CNN_SIZE = 80  # about the smallest input the default CNN's four valid conv blocks accept
VGG_SIZE = 32  # the smallest input VGG16 accepts


@pytest.fixture(autouse=True)
def float32_policy():
    """Leave the global dtype policy as float32 whatever a test set it to."""
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


def pixels(batch, size):
    return np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def test_custom_cnn_has_the_seed_reports_parameter_count():
    model = models.build_custom_cnn(GENRES, image_size=250)
    assert model.name == "custom_cnn"
    assert model.count_params() == 1_168_952


def test_vgg16_parameter_count():
    model = models.build_vgg16(GENRES, image_size=250, weights="none")
    assert model.count_params() == 14_714_688 + 6_422_784 + 6_168 == 21_143_640


@pytest.mark.parametrize(
    "hparams",
    [{"filters": (8, 16, 32, 32)}, {"kernel_size": 3}, {"dense_units": (32,)}],
)
def test_hyperparameters_change_the_architecture(hparams):
    default = models.build_custom_cnn(GENRES, image_size=CNN_SIZE).count_params()
    assert models.build_custom_cnn(GENRES, image_size=CNN_SIZE, **hparams).count_params() != default


def vgg_base_layers(model):
    return [layer for layer in model.get_layer("vgg16").layers if layer.weights]


def test_trainable_blocks_zero_freezes_the_whole_base():
    model = models.build_vgg16(GENRES, image_size=VGG_SIZE, trainable_blocks=0)
    assert not any(layer.trainable for layer in vgg_base_layers(model))
    # Only the head trains: Dense(256) and the genre layer, kernel and bias each.
    assert len(model.trainable_weights) == 4


def test_trainable_blocks_one_unfreezes_only_block5():
    model = models.build_vgg16(GENRES, image_size=VGG_SIZE, trainable_blocks=1)
    trainable = {layer.name for layer in vgg_base_layers(model) if layer.trainable}
    assert trainable == {"block5_conv1", "block5_conv2", "block5_conv3"}


def test_trainable_blocks_out_of_range_is_a_user_error():
    with pytest.raises(PosterRayError, match="trainable_blocks"):
        models.build_vgg16(GENRES, image_size=VGG_SIZE, trainable_blocks=6)


def test_resolve_none_means_random_init():
    assert vgg16.resolve_vgg16_weights("none") is None


def test_resolve_missing_weights_file_names_it(tmp_path):
    missing = tmp_path / "nope.h5"
    with pytest.raises(PosterRayError, match="nope.h5"):
        vgg16.resolve_vgg16_weights(str(missing))


def test_resolve_imagenet_offline_says_where_to_put_the_file(keras_home):
    with pytest.raises(PosterRayError) as raised:
        vgg16.resolve_vgg16_weights("imagenet")
    message = str(raised.value)
    assert vgg16.VGG16_WEIGHTS_FILE in message
    assert str(keras_home / "models") in message
    assert vgg16.VGG16_WEIGHTS_URL in message
    assert "--weights none" in message
    assert "\n" not in message


@pytest.mark.parametrize("how", ["imagenet", "path"])
def test_pretrained_weights_are_loaded_and_made_rgb(keras_home, how):
    weights_file = keras_home / "models" / vgg16.VGG16_WEIGHTS_FILE
    weights_file.parent.mkdir()
    # VGG16's conv weights do not depend on the input size, so a small build makes the file.
    source = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    source.save_weights(str(weights_file))

    weights = "imagenet" if how == "imagenet" else str(weights_file)
    model = models.build_vgg16(GENRES, image_size=32, weights=weights)
    base = model.get_layer("vgg16")

    for expected, actual in zip(source.weights[2:], base.weights[2:], strict=True):
        np.testing.assert_array_equal(actual.numpy(), expected.numpy())
    kernel, bias = base.get_layer("block1_conv1").get_weights()
    source_kernel, source_bias = source.get_layer("block1_conv1").get_weights()
    np.testing.assert_array_equal(kernel, source_kernel[:, :, ::-1, :])
    np.testing.assert_array_equal(bias, source_bias)

    # RGB pixels through our model's base == Keras' own caffe preprocessing (BGR, means).
    batch = pixels(2, 32).astype("float32")
    features = base(model.get_layer("caffe_preprocessing")(batch))
    expected = source(keras.applications.vgg16.preprocess_input(batch.copy()))
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("name", "size"), [("custom_cnn", CNN_SIZE), ("vgg16", VGG_SIZE)])
def test_outputs_are_probabilities_per_genre_from_uint8_pixels(name, size):
    model = models.build_model(name, num_genres=5, image_size=size)
    predictions = model.predict(pixels(3, size), verbose=0)
    assert predictions.shape == (3, 5)
    assert ((predictions >= 0) & (predictions <= 1)).all()


@pytest.mark.parametrize(("name", "size"), [("custom_cnn", CNN_SIZE), ("vgg16", VGG_SIZE)])
def test_saved_model_loads_in_safe_mode_with_identical_predictions(tmp_path, name, size):
    model = models.build_model(name, num_genres=5, image_size=size)
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


@pytest.mark.parametrize("name", ["custom_cnn", "vgg16"])
@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_with_precision_keeps_the_weights_and_the_float32_head(name, precision):
    size = CNN_SIZE if name == "custom_cnn" else VGG_SIZE
    trained = models.build_model(name, 5, size)
    reduced = models.with_precision(trained, precision)
    convolutions = [layer for layer in reduced.submodules if isinstance(layer, keras.layers.Conv2D)]
    assert convolutions and {layer.compute_dtype for layer in convolutions} == {precision}
    assert reduced.get_layer("genres").compute_dtype == "float32"
    batch = pixels(4, size)
    np.testing.assert_allclose(
        reduced.predict(batch, verbose=0), trained.predict(batch, verbose=0), atol=0.05
    )
    back = models.with_precision(reduced, "float32")
    assert {
        layer.compute_dtype for layer in back.submodules if isinstance(layer, keras.layers.Layer)
    } == {"float32"}
    np.testing.assert_array_equal(back.predict(batch, verbose=0), trained.predict(batch, verbose=0))


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(PosterRayError, match="custom_cnn, vgg16"):
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
