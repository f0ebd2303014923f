"""The two classifier heads of the lesson, on one MLP body."""

from __future__ import annotations

from collections.abc import Sequence

import keras

from logitlab.config import check_head


def build_model(
    n_features: int, n_classes: int, layers: Sequence[int], head: str, activation: str = "relu"
) -> keras.Model:
    """Dense hidden layers, then a Dense head with `n_classes` units.

    - `softmax`: the head outputs probabilities (`activation="softmax"`);
    - `logit`: the head is linear and outputs logits; probabilities come from softmax at prediction time.
    """
    check_head(head)
    return keras.Sequential(
        [
            keras.Input(shape=(n_features,)),
            *(keras.layers.Dense(units, activation=activation, name=f"hidden_{i}") for i, units in enumerate(layers)),
            keras.layers.Dense(n_classes, activation="softmax" if head == "softmax" else None, name="head"),
        ],
        name=f"mlp_{head}",
    )


def loss_for(head: str) -> keras.losses.Loss:
    """SparseCategoricalCrossentropy, told whether the model's outputs are logits."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=check_head(head) == "logit")


def compile_model(model: keras.Model, head: str, lr: float, steps_per_execution: int = 1) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss=loss_for(head),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        steps_per_execution=steps_per_execution,
    )
    return model
