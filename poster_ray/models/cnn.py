"""The seed report's CNN, trained from scratch on uint8 posters."""

from __future__ import annotations

from collections.abc import Sequence

from poster_ray.models.heads import genre_head
from poster_ray.tf_import import keras


def build_custom_cnn(
    num_genres: int,
    image_size: int = 250,
    filters: Sequence[int] = (16, 32, 64, 64),
    kernel_size: int = 5,
    conv_dropout: float = 0.25,
    dense_units: Sequence[int] = (128, 64),
    dense_dropout: float = 0.1,
) -> keras.Model:
    """The seed report's CNN: conv/pool/dropout blocks, then a dense head.

    Convolutions use valid padding, as in the report, so the defaults give exactly
    1,168,952 parameters at 250x250 with 24 genres.
    """
    inputs = keras.Input(shape=(image_size, image_size, 3))
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    for n_filters in filters:
        x = keras.layers.Conv2D(n_filters, kernel_size, activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
        x = keras.layers.Dropout(conv_dropout)(x)
    x = keras.layers.Flatten()(x)
    for units in dense_units:
        x = keras.layers.Dense(units, activation="relu")(x)
        x = keras.layers.Dropout(dense_dropout)(x)
    outputs = genre_head(num_genres)(x)
    return keras.Model(inputs, outputs, name="custom_cnn")
