"""How a backbone's last feature map becomes one feature vector per poster.

Average pooling (what ImageNet classifiers use) blurs a poster's few telling regions (a
face, a gun, a title's type) into its background; max pooling keeps the strongest
response of each channel; GeM (Radenović et al. 2018, generalised mean with p = 3) sits
between them; "avg+max" concatenates both, twice the features for the head to weigh.
Measured for a frozen Lite0 head on the shared dataset, average pooling was best on
every figure (README, "Poolings and several backbones"): it stays the default.
"""

from __future__ import annotations

from poster_ray.config import POOLINGS
from poster_ray.errors import PosterRayError
from poster_ray.tf_import import keras, tf

GEM_POWER = 3.0  # the usual fixed p: features are frozen, so nothing could learn it


@keras.saving.register_keras_serializable(package="poster_ray")
class GeneralizedMeanPooling(keras.layers.Layer):
    """Per channel, (mean over the map of x^p)^(1/p): p = 1 is average pooling, and as p
    grows it tends to max pooling. Inputs are clipped at `epsilon` (ReLU6 maps are >= 0)."""

    def __init__(self, power: float = GEM_POWER, epsilon: float = 1e-6, **kwargs) -> None:
        super().__init__(**kwargs)
        self.power, self.epsilon = power, epsilon

    def call(self, feature_map: tf.Tensor) -> tf.Tensor:
        clipped = tf.maximum(feature_map, tf.cast(self.epsilon, feature_map.dtype))
        mean = tf.reduce_mean(tf.pow(clipped, self.power), axis=[1, 2])
        return tf.pow(mean, 1.0 / self.power)

    def get_config(self) -> dict:
        return {**super().get_config(), "power": self.power, "epsilon": self.epsilon}


def pool_features(feature_map: tf.Tensor, pooling: str) -> tf.Tensor:
    """`feature_map` (batch, height, width, channels) pooled as `pooling` says."""
    if pooling not in POOLINGS:
        raise PosterRayError(f"unknown pooling {pooling!r}; choose one of {list(POOLINGS)}")
    average = keras.layers.GlobalAveragePooling2D(name="avg_pool")
    maximum = keras.layers.GlobalMaxPooling2D(name="max_pool")
    if pooling == "avg":
        return average(feature_map)
    if pooling == "max":
        return maximum(feature_map)
    if pooling == "gem":
        return GeneralizedMeanPooling(name="gem_pool")(feature_map)
    both = [average(feature_map), maximum(feature_map)]
    return keras.layers.Concatenate(name="avg_max_pool")(both)
