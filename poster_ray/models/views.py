"""Fixed views of a poster (config.POSTER_VIEWS), as layers in front of a model.

A frozen backbone's features can be cached once per view: a head then trains on K
views of every training poster (augmentation for the frozen path) at the cost of K
passes of the backbone, once. Test-time augmentation averages a model's predictions
over the same views. Both are graph ops (one `crop_and_resize` for every crop and
mirror), so a view is computed alike on the feature actors and in evaluation.
"""

from __future__ import annotations

from poster_ray.config import POSTER_VIEWS, PosterView
from poster_ray.errors import PosterRayError
from poster_ray.tf_import import keras, tf


def view_boxes(views: tuple[PosterView, ...]) -> list[tuple[float, float, float, float]]:
    """`crop_and_resize` boxes (y1, x1, y2, x2): a mirror swaps its box's x1 and x2."""
    boxes = []
    for view in views:
        top, left, bottom, right = view.box
        boxes.append((top, right, bottom, left) if view.mirror else (top, left, bottom, right))
    return boxes


def chosen_views(count: int, first: int = 0) -> tuple[PosterView, ...]:
    if not (count >= 1 and first >= 0 and first + count <= len(POSTER_VIEWS)):
        raise PosterRayError(
            f"views {first}..{first + count - 1} asked for; there are {len(POSTER_VIEWS)}"
        )
    return POSTER_VIEWS[first : first + count]


class PosterViews(keras.layers.Layer):
    """(batch, size, size, 3) posters -> (batch * count, size, size, 3): views `first`
    to `first + count - 1` of each poster, poster by poster, as float pixels 0-255."""

    def __init__(self, count: int, first: int = 0, **kwargs) -> None:
        super().__init__(**{"dtype": "float32", **kwargs})  # pixels, whatever the policy
        self.count, self.first = count, first
        views = chosen_views(count, first)
        self.boxes = tf.constant(view_boxes(views), tf.float32)
        self.contrasts = tf.constant([view.contrast for view in views], tf.float32)

    def call(self, images: tf.Tensor) -> tf.Tensor:
        images = tf.cast(images, tf.float32)
        posters = tf.shape(images)[0]
        crops = tf.image.crop_and_resize(
            images,
            boxes=tf.tile(self.boxes, [posters, 1]),
            box_indices=tf.repeat(tf.range(posters), self.count),
            crop_size=images.shape[1:3],
        )
        contrast = tf.reshape(tf.tile(self.contrasts, [posters]), [-1, 1, 1, 1])
        mean = tf.reduce_mean(crops, axis=[1, 2, 3], keepdims=True)
        return tf.clip_by_value((crops - mean) * contrast + mean, 0.0, 255.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "count": self.count, "first": self.first}


class MeanOverViews(keras.layers.Layer):
    """(batch * count, genres) -> (batch, genres): each poster's views averaged."""

    def __init__(self, count: int, **kwargs) -> None:
        super().__init__(**{"dtype": "float32", **kwargs})  # probabilities, as the model's
        self.count = count

    def call(self, predictions: tf.Tensor) -> tf.Tensor:
        per_poster = tf.reshape(predictions, [-1, self.count, predictions.shape[-1]])
        return tf.reduce_mean(per_poster, axis=1)

    def get_config(self) -> dict:
        return {**super().get_config(), "count": self.count}


def on_view(model: keras.Model, view: int) -> keras.Model:
    """`model` on view `view` of each poster (view 0, the poster itself: `model`)."""
    if view == 0:
        return model
    inputs = keras.Input(shape=model.input_shape[1:], dtype=model.inputs[0].dtype)
    return keras.Model(inputs, model(PosterViews(1, first=view)(inputs)), name=model.name)


def with_test_views(model: keras.Model, count: int) -> keras.Model:
    """`model`'s predictions averaged over the first `count` views of each poster
    (test-time augmentation); `model` itself for one view."""
    if count == 1:
        return model
    inputs = keras.Input(shape=model.input_shape[1:], dtype=model.inputs[0].dtype)
    averaged = MeanOverViews(count)(model(PosterViews(count)(inputs)))
    return keras.Model(inputs, averaged, name=model.name)
