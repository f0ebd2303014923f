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

from logitlab.model.heads import Head

HEAD_LAYER = "head"


@keras.saving.register_keras_serializable(package="logitlab")
class DetachLogits(keras.layers.Layer):
    """Passes probabilities through as a new tensor, without the logits Keras attached to them."""

    def call(self, inputs):
        return keras.ops.copy(inputs)


def n_outputs(task: str, n_classes: int) -> int:
    return 1 if task == "binary" else n_classes


def build_model(
    n_features: int, n_classes: int, layers: Sequence[int], head: Head,
    activation: str = "relu", task: str = "multiclass", precision: str = "float32",
) -> keras.Model:
    """Dense hidden layers, then the Dense head (named "head"), then DetachLogits for strict heads;
    every layer under the Keras dtype policy `precision` (given to each layer, so no global policy
    leaks from one job of a sweep to the next; a mixed policy keeps float32 variables). The output
    is in the policy's compute dtype, as the reference notebooks' models would be under it: the
    cross-entropy casts it to its own float32, and that cast carries no attached logits."""
    stack = [
        keras.Input(shape=(n_features,)),
        *(keras.layers.Dense(units, activation=activation, name=f"hidden_{i}", dtype=precision)
          for i, units in enumerate(layers)),
        keras.layers.Dense(n_outputs(task, n_classes), activation=head.activation, name=HEAD_LAYER, dtype=precision),
    ]
    if head.detached:
        stack.append(DetachLogits(name="detach_logits", dtype=precision))
    return keras.Sequential(stack, name=f"mlp_{task}_{head.name}")


def compile_model(
    model: keras.Model, head: Head, lr: float, steps_per_execution: int = 1, task: str = "multiclass",
    precision: str = "float32",
) -> keras.Model:
    """Adam, the head's cross-entropy and accuracy (`head.loss`, `head.accuracy`); under mixed_float16 Adam scales the loss
    (LossScaleOptimizer, as Keras does for a model under a global mixed_float16 policy), so small
    float16 gradients do not flush to zero."""
    optimizer = keras.optimizers.Adam(learning_rate=lr)
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        loss=head.loss(task),
        metrics=[head.accuracy(task)],
        steps_per_execution=steps_per_execution,
    )
    return model


def forward(model: keras.Model, x: np.ndarray, batch: int) -> np.ndarray:
    """`model.predict(x, batch_size=batch)`: the same batches through the same layers, called
    directly (predict builds a tf.data pipeline and traces a graph function each time it is called)."""
    return np.concatenate([np.asarray(model(x[i:i + batch], training=False)) for i in range(0, len(x), batch)]
                          or [np.zeros((0, *model.output.shape[1:]), np.float32)])


def head_logits(model: keras.Model, x: np.ndarray, batch: int) -> np.ndarray:
    """The head's logits as the model computed them, in its compute dtype: a linear head's outputs,
    or the pre-activation Keras attaches to a softmax or sigmoid output (`_keras_logits`; taken
    before a strict head's DetachLogits)."""
    head = keras.Model(model.inputs[0], model.get_layer(HEAD_LAYER).output)
    parts = []
    for i in range(0, len(x), batch):
        out = head(x[i:i + batch], training=False)
        parts.append(np.asarray(getattr(out, "_keras_logits", out)))
    return np.concatenate(parts) if parts else np.zeros((0, *head.output.shape[1:]), np.float32)


def head_inputs(model: keras.Model, x: np.ndarray, batch: int) -> np.ndarray:
    """What the head layer receives: the last hidden layer's activations."""
    return forward(keras.Model(model.inputs[0], model.get_layer(HEAD_LAYER).input), x, batch)


def head_weights(model: keras.Model) -> tuple[np.ndarray, np.ndarray]:
    head = model.get_layer(HEAD_LAYER)
    return np.asarray(head.kernel), np.asarray(head.bias)
