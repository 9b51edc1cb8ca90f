"""The genre heads: the sigmoid layer every model ends with, and a transfer model's head."""

from __future__ import annotations

from poster_ray.tf_import import keras


def genre_head(num_genres: int) -> keras.layers.Layer:
    """One independent sigmoid per genre (multi-label), kept float32 under mixed precision."""
    return keras.layers.Dense(num_genres, activation="sigmoid", dtype="float32", name="genres")


def build_head(
    features: int, num_genres: int, units: int = 512, dropout: float = 0.5
) -> keras.Model:
    """Features -> genres: dropout, one hidden ReLU layer (none when `units` is 0),
    dropout, a sigmoid per genre. Its defaults are the untuned head (models.spaces)."""
    inputs = keras.Input(shape=(features,))
    x = keras.layers.Dropout(dropout)(inputs)
    if units:
        x = keras.layers.Dense(units, activation="relu")(x)
        x = keras.layers.Dropout(dropout)(x)
    return keras.Model(inputs, genre_head(num_genres)(x), name="head")
