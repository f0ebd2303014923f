"""When is the logit head "more numerically accurate"? The test loss computed three ways (from
probabilities with Keras's clipping, from logits, and the way training computed it), each against a
float64 reference from the same logits; saturation of the probabilities; and the gradient the last
layer gets where the probability path clips.

All of it in the precision the model ran in (`precision`, a Keras dtype policy): the logits and
probabilities are the model's own, in its compute dtype (float16, bfloat16, float32 or float64), and
every loss is Keras's cross-entropy, which first casts them to its own float32 (`Loss.__call__`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from logitlab.model.heads import Head, sigmoid, softmax  # noqa: F401  (softmax, sigmoid: re-exported)

EPSILON = 1e-7                      # keras.config.epsilon(): probabilities are clipped to [EPSILON, 1 - EPSILON]
CLIP_CEILING = float(-np.log(np.float32(EPSILON)))  # 16.118..., the largest loss the probability path can give


def naive_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """The reference notebooks' exp(z) / sum(exp(z)): overflows to inf/inf = nan for large logits."""
    e = np.exp(np.asarray(z))
    return e / e.sum(axis=axis, keepdims=True)


def argmax_ties(probs: np.ndarray) -> np.ndarray:
    """Examples whose largest probability is shared by two or more classes. The multi-class sigmoid
    head saturates several classes at exactly 1.0: argmax (and Keras's accuracy) then takes the first
    of them, right or not, while the loss, from the logits, still tells them apart."""
    return (probs == probs.max(axis=1, keepdims=True)).sum(axis=1) > 1


def predicted_class(probs: np.ndarray, task: str) -> np.ndarray:
    return (probs[:, 0] >= 0.5).astype(np.int64) if task == "binary" else probs.argmax(axis=1)


def _keras_loss(y: np.ndarray, values: np.ndarray, task: str, from_logits: bool) -> np.ndarray:
    """Keras's per-example cross-entropy on plain arrays, which carry no attached logits, cast first to
    the loss's float32 as a Keras Loss casts the model's output."""
    import keras

    values = np.asarray(values).astype(np.float32)
    if task == "binary":
        out = keras.losses.binary_crossentropy(y.reshape(-1, 1).astype(np.float32), values, from_logits=from_logits)
    else:
        out = keras.losses.sparse_categorical_crossentropy(y, values, from_logits=from_logits)
    return np.asarray(out, dtype=np.float32).reshape(-1)


def probability_masks(probs: np.ndarray, task: str) -> dict[str, np.ndarray]:
    """Which probabilities the head put out are exactly 0, exactly 1, and in Keras's clip band, each
    counted once: a binary head's one p per example (its complement is no output of the model), a
    multi-class head's one per class; compared in the loss's float32."""
    p = probs.reshape(-1) if task == "binary" else probs
    low, high = np.float32(EPSILON), np.float32(1 - EPSILON)
    return {"exact0": p == 0, "exact1": p == 1, "clip_band": (p < low) | (p > high)}


def clipped_true_class(probs: np.ndarray, labels: np.ndarray, task: str) -> np.ndarray:
    """Where Keras's clip is active on the true class's probability: the probability path's loss sits at
    its ceiling there (-log 1e-7 = 16.118; for a binary label 0, -log(1 - float32(1 - 1e-7)) = 15.94)
    and its gradient is zero."""
    low, high = np.float32(EPSILON), np.float32(1 - EPSILON)
    if task == "binary":
        p = probs[:, 0]
        return np.where(labels == 1, p <= low, p >= high)
    return probs[np.arange(len(labels)), labels] <= low


def training_path(model: Any, x: np.ndarray, task: str, head: Head) -> str:
    """Which path the training loss takes, by the mechanism Keras itself checks: a loss told
    `from_logits`, or an output tensor still carrying the logits Keras attached to it
    (`_keras_logits`) once the loss has converted it to its own dtype, as `Loss.__call__` does. A
    float16, bfloat16 or float64 output is cast to the loss's float32, and the cast carries no
    logits: the softmax head then trains on clipped probabilities, as softmax_strict does."""
    import keras

    if head.from_logits:
        return "logits"
    out = keras.ops.convert_to_tensor(model(x, training=False), dtype=model.loss.dtype)
    return "logits" if hasattr(out, "_keras_logits") else "probabilities"


def training_path_loss(model: Any, x: np.ndarray, y: np.ndarray, task: str, batch: int) -> np.ndarray:
    """Per-example loss exactly as training computed it: the compiled loss on the model's own output tensor."""
    loss = model.loss.__class__.from_config({**model.loss.get_config(), "reduction": None})
    target = y.reshape(-1, 1).astype(np.float32) if task == "binary" else y
    parts = [np.asarray(loss(target[i:i + batch], model(x[i:i + batch], training=False))).reshape(-1)
             for i in range(0, len(x), batch)]
    return np.concatenate(parts).astype(np.float32)


def last_layer_gradient_norms(
    h: np.ndarray, kernel: np.ndarray, bias: np.ndarray, y: np.ndarray, task: str, head: Head
) -> dict[str, float]:
    """Norm of d(mean loss)/d(kernel, bias) of the head, from probabilities and from logits: the head
    computed in the dtype of its inputs `h` (the model's compute dtype), the loss in float32."""
    import keras
    import tensorflow as tf

    # tf.nn, not keras.activations: no logits get attached, so the probability path stays one.
    squash = tf.nn.sigmoid if head.squash(task) == "sigmoid" else tf.nn.softmax
    inputs = tf.constant(h)
    w, b = tf.constant(kernel), tf.constant(bias)
    norms = {}
    for name, from_logits in (("probs", False), ("logits", True)):
        with tf.GradientTape() as tape:
            tape.watch([w, b])
            z = tf.matmul(inputs, tf.cast(w, inputs.dtype)) + tf.cast(b, inputs.dtype)
            values = tf.cast(z if from_logits else squash(z), tf.float32)  # the loss's dtype
            if task == "binary":
                per_example = keras.losses.binary_crossentropy(
                    tf.constant(y.reshape(-1, 1), tf.float32), values, from_logits=from_logits)
            else:
                per_example = keras.losses.sparse_categorical_crossentropy(tf.constant(y), values, from_logits=from_logits)
            loss = tf.reduce_mean(per_example)
        dw, db = tape.gradient(loss, [w, b])
        norms[name] = float(tf.sqrt(tf.reduce_sum(dw * dw) + tf.reduce_sum(db * db)))
    return norms


def numerics(
    model: Any, x: np.ndarray, y: np.ndarray, task: str, head: Head, batch: int, outputs: np.ndarray | None = None,
) -> tuple[dict[str, float], dict[str, str]]:
    """Metrics and tags that tell the heads apart numerically, on a test set (x, y).

    `outputs`, the model's predictions on x, when the caller has them already."""
    from logitlab.model.build import forward, head_inputs, head_logits, head_weights

    h = head_inputs(model, x, batch)
    kernel, bias = head_weights(model)
    z = head_logits(model, x, batch)    # the head's logits as the model computed them, in its dtype
    if outputs is None:
        outputs = forward(model, x, batch)
    probs = head.probabilities(outputs, task)
    reference = head.reference_loss(z, y, task)
    metrics: dict[str, float] = {"test_loss_f64": float(reference.mean())}
    tags: dict[str, str] = {}

    paths = {
        "probs": _keras_loss(y, probs, task, from_logits=False),
        "logits": _keras_loss(y, z, task, from_logits=True),
        "train": training_path_loss(model, x, y, task, batch),
    }
    if not head.softmax_of_logits(task):
        # Softmax of these logits is not this head's model of the data: no "from logits" loss of it exists.
        tags["numerics.logits_path"] = f"n/a: {head.squash(task)} outputs are not softmax probabilities"
        paths.pop("logits")
    for name, values in paths.items():
        error = np.abs(values.astype(np.float64) - reference)
        metrics[f"loss_err_{name}_mean"] = float(error.mean())
        metrics[f"loss_err_{name}_max"] = float(error.max())
    tags["numerics.train_loss_path"] = training_path(model, x[:1], task, head)

    p = probs.reshape(-1) if task == "binary" else probs
    for name, mask in probability_masks(probs, task).items():
        metrics[f"prob_{name}_count"] = float(mask.sum())
        metrics[f"prob_{name}_fraction"] = float(mask.sum() / p.size)
    if task == "multiclass":
        metrics["probs_sum_max_error"] = float(np.abs(p.astype(np.float64).sum(axis=1) - 1).max())
        ties = argmax_ties(p)
        metrics["argmax_tie_count"] = float(ties.sum())
        metrics["argmax_tie_fraction"] = float(ties.mean())

    at_ceiling = clipped_true_class(probs, y.reshape(-1).astype(np.int64), task)
    metrics["clip_ceiling_count"] = float(at_ceiling.sum())
    metrics["clip_ceiling_fraction"] = float(at_ceiling.mean())
    if at_ceiling.any():
        norms = last_layer_gradient_norms(h[at_ceiling], kernel, bias, y[at_ceiling], task, head)
        metrics["clip_grad_norm_probs"] = norms["probs"]
        metrics["clip_grad_norm_logits"] = norms["logits"]
    return metrics, tags
