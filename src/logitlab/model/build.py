"""The classifier heads of the lesson (see `logitlab.heads`) on one MLP body.

Keras 3 attaches the pre-activation logits to a softmax or sigmoid output (`_keras_logits`), and
its cross-entropy uses them instead of the probabilities, so `softmax` trains exactly as `logit`
(and the mismatched multi-class `sigmoid` head trains on softmax of its logits). The strict heads
end in `DetachLogits`, which copies the probabilities into a new tensor that carries no logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from logitlab.model.heads import head_spec

HEAD_LAYER = "head"


@keras.saving.register_keras_serializable(package="logitlab")
class DetachLogits(keras.layers.Layer):
    """Passes probabilities through as a new tensor, without the logits Keras attached to them."""

    def call(self, inputs):
        return keras.ops.copy(inputs)


def n_outputs(task: str, n_classes: int) -> int:
    return 1 if task == "binary" else n_classes


def build_model(
    n_features: int, n_classes: int, layers: Sequence[int], head: str,
    activation: str = "relu", task: str = "multiclass",
) -> keras.Model:
    """Dense hidden layers, then the Dense head (named "head"), then DetachLogits for strict heads."""
    spec = head_spec(task, head)
    stack = [
        keras.Input(shape=(n_features,)),
        *(keras.layers.Dense(units, activation=activation, name=f"hidden_{i}") for i, units in enumerate(layers)),
        keras.layers.Dense(n_outputs(task, n_classes), activation=spec.activation, name=HEAD_LAYER),
    ]
    if spec.detached:
        stack.append(DetachLogits(name="detach_logits"))
    return keras.Sequential(stack, name=f"mlp_{task}_{head}")


def loss_for(head: str, task: str = "multiclass") -> keras.losses.Loss:
    """The task's cross-entropy, told whether the model's outputs are logits."""
    from_logits = head_spec(task, head).from_logits
    if task == "binary":
        return keras.losses.BinaryCrossentropy(from_logits=from_logits)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)


def accuracy_for(head: str, task: str = "multiclass") -> keras.metrics.Metric:
    """Accuracy under the name `accuracy`: argmax for multi-class; for binary, a threshold at p = 0.5."""
    if task == "binary":
        return keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0 if head_spec(task, head).from_logits else 0.5)
    return keras.metrics.SparseCategoricalAccuracy(name="accuracy")


def compile_model(
    model: keras.Model, head: str, lr: float, steps_per_execution: int = 1, task: str = "multiclass"
) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss=loss_for(head, task),
        metrics=[accuracy_for(head, task)],
        steps_per_execution=steps_per_execution,
    )
    return model


def forward(model: keras.Model, x: np.ndarray, batch: int) -> np.ndarray:
    """`model.predict(x, batch_size=batch)`: the same batches through the same layers, called
    directly (predict builds a tf.data pipeline and traces a graph function each time it is called)."""
    return np.concatenate([np.asarray(model(x[i:i + batch], training=False)) for i in range(0, len(x), batch)]
                          or [np.zeros((0, *model.output.shape[1:]), np.float32)])


def head_inputs(model: keras.Model, x: np.ndarray, batch: int) -> np.ndarray:
    """What the head layer receives: the last hidden layer's activations."""
    return forward(keras.Model(model.inputs[0], model.get_layer(HEAD_LAYER).input), x, batch)


def head_weights(model: keras.Model) -> tuple[np.ndarray, np.ndarray]:
    head = model.get_layer(HEAD_LAYER)
    return np.asarray(head.kernel), np.asarray(head.bias)
