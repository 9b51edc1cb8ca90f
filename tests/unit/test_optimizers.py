"""Discriminative learning rates: the backbone's steps are a fraction of the head's."""

import numpy as np
import tf_keras as keras

from poster_ray.models.optimizers import TwoRateAdam, make_optimizer


def two_part_model() -> keras.Model:
    """A "backbone" dense layer under a sub-model named head, as transfer models are."""
    inputs = keras.Input(shape=(4,))
    features = keras.layers.Dense(3, name="backbone_dense")(inputs)
    head_inputs = keras.Input(shape=(3,))
    head = keras.Model(head_inputs, keras.layers.Dense(2, name="genres")(head_inputs), name="head")
    return keras.Model(inputs, head(features))


def one_step(model: keras.Model, optimizer) -> list[np.ndarray]:
    """Each trainable variable's change after one step on a fixed batch."""
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    y = np.random.default_rng(1).normal(size=(8, 2)).astype("float32")
    model.compile(optimizer=optimizer, loss="mse")
    before = [variable.numpy() for variable in model.trainable_variables]
    model.train_on_batch(x, y)
    return [v.numpy() - b for v, b in zip(model.trainable_variables, before, strict=True)]


def test_the_backbone_steps_a_fraction_of_adams_and_the_head_all_of_it():
    model = two_part_model()
    weights = model.get_weights()
    plain = one_step(model, keras.optimizers.Adam(1e-2))
    model.set_weights(weights)
    optimizer = make_optimizer(model, 1e-2, backbone_rate=0.1)
    assert isinstance(optimizer, TwoRateAdam)
    scaled = one_step(model, optimizer)
    backbone, head = model.trainable_variables[:2], model.trainable_variables[2:]
    assert [v.name for v in head] == optimizer.head_variables
    for plain_step, scaled_step in zip(
        plain[: len(backbone)], scaled[: len(backbone)], strict=True
    ):
        np.testing.assert_allclose(scaled_step, 0.1 * plain_step, rtol=1e-4, atol=1e-7)
    for plain_step, scaled_step in zip(
        plain[len(backbone) :], scaled[len(backbone) :], strict=True
    ):
        np.testing.assert_allclose(scaled_step, plain_step, rtol=1e-4, atol=1e-7)


def test_one_rate_or_no_head_is_plain_adam():
    model = two_part_model()
    assert type(make_optimizer(model, 1e-3, backbone_rate=1.0)) is keras.optimizers.Adam
    inputs = keras.Input(shape=(4,))
    headless = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    assert type(make_optimizer(headless, 1e-3, backbone_rate=0.1)) is keras.optimizers.Adam


def test_a_saved_model_resumes_with_its_two_rates(tmp_path):
    """A checkpoint loads its optimizer back (safe mode), head variables and rate too."""
    model = two_part_model()
    one_step(model, make_optimizer(model, 1e-2, backbone_rate=0.25))
    model.save(tmp_path / "model.keras", save_format="keras_v3")
    loaded = keras.models.load_model(tmp_path / "model.keras", safe_mode=True)
    assert isinstance(loaded.optimizer, TwoRateAdam)
    assert loaded.optimizer.backbone_rate == 0.25
    assert loaded.optimizer.head_variables == model.optimizer.head_variables
    assert loaded.optimizer.iterations.numpy() == 1


def test_under_float16_the_loss_scaled_optimizer_keeps_the_two_rates():
    """The GPU branch (float16 with loss scaling), forced on a CPU: Keras wraps the
    two-rate optimizer, and the backbone's step is still a fraction of Adam's."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = two_part_model()
        weights = model.get_weights()
        plain = one_step(model, keras.optimizers.Adam(1e-2))
        model.set_weights(weights)
        scaled = one_step(model, make_optimizer(model, 1e-2, backbone_rate=0.1))
        assert isinstance(model.optimizer, keras.mixed_precision.LossScaleOptimizer)
        assert isinstance(model.optimizer.inner_optimizer, TwoRateAdam)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    np.testing.assert_allclose(scaled[0], 0.1 * plain[0], rtol=1e-2, atol=1e-6)
    np.testing.assert_allclose(scaled[-1], plain[-1], rtol=1e-2, atol=1e-6)
