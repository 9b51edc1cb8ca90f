"""The genre head every model ends with."""

from __future__ import annotations

from poster_ray.tf_import import keras


def genre_head(num_genres: int) -> keras.layers.Layer:
    """One independent sigmoid per genre (multi-label), kept float32 under mixed precision."""
    return keras.layers.Dense(num_genres, activation="sigmoid", dtype="float32", name="genres")
