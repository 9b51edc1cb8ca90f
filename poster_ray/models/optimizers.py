"""Discriminative learning rates for fine-tuning: the pretrained backbone moves slower
than the genre head trained on top of it (Howard & Ruder 2018, ULMFiT), so the few
thousand posters adjust ImageNet features without washing them out."""

from __future__ import annotations

from collections.abc import Sequence

from poster_ray.tf_import import keras, tf

HEAD_LAYER = "head"  # the sub-model every transfer model's genre head is (models.transfer)


@keras.saving.register_keras_serializable(package="poster_ray")
class TwoRateAdam(keras.optimizers.Adam):
    """Adam whose steps on every variable but the head's (`head_variables`, by name) are
    `backbone_rate` times as long. By name, so that the optimizer saved in a checkpoint
    still knows them when a resumed run loads it."""

    def __init__(
        self,
        learning_rate: float = 1e-3,
        backbone_rate: float = 0.1,
        head_variables: Sequence[str] = (),
        **kwargs,
    ) -> None:
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.backbone_rate = backbone_rate
        self.head_variables = list(head_variables)
        self._head_names = set(self.head_variables)

    def update_step(self, gradient: tf.Tensor, variable: tf.Variable) -> None:
        if variable.name in self._head_names:
            super().update_step(gradient, variable)
            return
        before = tf.identity(variable)
        super().update_step(gradient, variable)  # Adam's step, then shortened
        variable.assign(before + self.backbone_rate * (variable - before))

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "backbone_rate": self.backbone_rate,
            "head_variables": self.head_variables,
        }


def make_optimizer(model: keras.Model, learning_rate: float, backbone_rate: float = 1.0):
    """Adam at `learning_rate`; for a model with a genre head and other trainable
    layers, and a `backbone_rate` other than 1, those layers' steps scaled by it."""
    layers = {layer.name: layer for layer in model.layers}
    if backbone_rate == 1 or HEAD_LAYER not in layers:
        return keras.optimizers.Adam(learning_rate)
    head = [variable.name for variable in layers[HEAD_LAYER].trainable_variables]
    return TwoRateAdam(learning_rate, backbone_rate, head)
