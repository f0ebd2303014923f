"""The numerics that tell the heads apart, and a pin on Keras 3's logit rescue."""

import keras
import numpy as np
import pytest

from helpers import build_model, compile_model, numerics, reference_loss
from logitlab.model.build import head_weights
from logitlab.evaluate.numerics import (
    CLIP_CEILING,
    EPSILON,
    _keras_loss,
    clipped_true_class,
    naive_softmax,
    softmax,
)


def test_naive_softmax_overflows_where_the_stable_one_is_exact():
    z = np.array([[1000.0, 0.0, -1000.0]], dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        naive = naive_softmax(z)
    assert np.isnan(naive).any()
    np.testing.assert_array_equal(softmax(z), [[1.0, 0.0, 0.0]])
    small = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(naive_softmax(small), softmax(small), rtol=1e-15)


def test_the_probability_path_clips_at_16_118_where_logits_give_60():
    z = np.array([[30.0, 0.0, -30.0, 5.0]], dtype=np.float32)
    y = np.array([2])
    from_probs = _keras_loss(y, softmax(z), "multiclass", from_logits=False)
    from_logits = _keras_loss(y, z, "multiclass", from_logits=True)
    assert CLIP_CEILING == pytest.approx(-np.log(1e-7), rel=1e-6)
    assert from_probs[0] == pytest.approx(16.118095, rel=1e-6)
    assert from_logits[0] == pytest.approx(60.0, rel=1e-6)
    assert reference_loss(z, y, "multiclass", "logit")[0] == pytest.approx(60.0, rel=1e-12)


def test_binary_reference_is_the_stable_log_sigmoid():
    z = np.array([[40.0], [-3.0]], dtype=np.float32)
    y = np.array([0, 1])
    np.testing.assert_allclose(reference_loss(z, y, "binary", "logit"), [40.0, 3.0 + np.log1p(np.exp(-3.0))], rtol=1e-12)
    p = np.array([[1.0], [1e-9]], dtype=np.float32)
    # Keras clips to [1e-7, float32(1 - 1e-7)]: the two ceilings differ, as float32 has no 1 - 1e-7
    np.testing.assert_allclose(_keras_loss(y, p, "binary", from_logits=False), [15.942385, 16.118095], rtol=1e-6)
    np.testing.assert_array_equal(clipped_true_class(p, y, "binary"), [True, True])
    np.testing.assert_array_equal(clipped_true_class(np.array([[0.5], [0.5]], np.float32), y, "binary"), [False, False])


def _blobs(n=400):
    from sklearn.datasets import make_blobs

    x, y = make_blobs(n_samples=n, centers=[[-5, 2], [-2, -2], [1, 2], [5, -2]], cluster_std=1.0, random_state=30)
    return x.astype(np.float32), y


def _loss_curve(head, task="multiclass", lr=0.2, epochs=5):
    x, y = _blobs()
    target = (y == 0).astype(np.float32).reshape(-1, 1) if task == "binary" else y
    keras.utils.set_random_seed(0)
    model = compile_model(build_model(2, 4, [25, 15], head, task=task), head, lr, task=task)
    return model.fit(x, target, epochs=epochs, batch_size=32, shuffle=False, verbose=0).history["loss"]


def test_keras3_hands_the_softmax_heads_logits_to_the_loss():
    """Pins Keras 3's behaviour: if a future Keras changes it, this test says so."""
    logit = _loss_curve("logit")
    assert _loss_curve("softmax") == logit, "softmax head no longer trains exactly as the logit head"
    assert _loss_curve("sigmoid") == logit, "the mismatched sigmoid head no longer trains on softmax of its logits"
    strict = _loss_curve("softmax_strict")
    assert max(abs(a - b) for a, b in zip(strict, logit)) > 0.01, "softmax_strict should see clipped probabilities"
    binary_logit = _loss_curve("logit", task="binary")
    assert _loss_curve("sigmoid", task="binary") == binary_logit
    assert _loss_curve("sigmoid_strict", task="binary") != binary_logit


def _trained(head, precision, x, y):
    keras.utils.set_random_seed(0)
    model = compile_model(build_model(2, 4, [8], head, precision=precision), head, 0.05, precision=precision)
    model.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)
    return model


@pytest.mark.parametrize("precision, rescued", [("float32", True), ("float64", False), ("mixed_float16", False),
                                                ("mixed_bfloat16", False)])
def test_the_logit_rescue_holds_at_float32_only(precision, rescued):
    """Pins Keras 3's behaviour per dtype policy. Its cross-entropy casts the model's output to its own
    float32 first; a float16, bfloat16 or float64 output is cast, the cast carries no attached logits,
    and the softmax head trains on clipped probabilities exactly as softmax_strict does. At float32 it
    trains exactly as the logit head. A Keras release that changes either fails here."""
    from helpers import training_path

    x, y = _blobs(160)
    models = {head: _trained(head, precision, x, y) for head in ("softmax", "logit", "softmax_strict")}
    weights = {head: [np.asarray(w) for w in m.get_weights()] for head, m in models.items()}

    def same(a, b):
        return all(np.array_equal(p, q) for p, q in zip(weights[a], weights[b]))

    compute = {"float32": "float32", "float64": "float64", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}
    assert models["softmax"](x[:2]).dtype.name == compute[precision]
    assert same("softmax", "logit") is rescued
    assert same("softmax", "softmax_strict") is not rescued
    assert not same("logit", "softmax_strict")
    assert training_path(models["softmax"], x[:4], "multiclass", "softmax") == ("logits" if rescued else "probabilities")
    assert training_path(models["logit"], x[:4], "multiclass", "logit") == "logits"


def test_numerics_run_in_the_models_precision():
    """Under mixed_float16 the saturated softmax head's probabilities are float16: exactly 0 and 1,
    and its loss takes the clipped path (no rescue), while the logits keep the true loss."""
    model, x, y = _saturated("softmax", precision="mixed_float16")
    metrics, tags = numerics(model, x, y, "multiclass", "softmax", 8)
    assert tags["numerics.train_loss_path"] == "probabilities"
    assert metrics["prob_exact1_count"] == len(x) and metrics["prob_exact0_count"] == 2 * len(x)
    assert metrics["clip_ceiling_fraction"] == 1.0 and metrics["clip_grad_norm_probs"] == 0.0
    assert metrics["loss_err_probs_max"] > 40 and metrics["loss_err_logits_max"] < 1e-3
    assert metrics["loss_err_train_max"] == pytest.approx(metrics["loss_err_probs_max"], abs=1e-3)
    float32, _, _ = _saturated("softmax")
    assert numerics(float32, x, y, "multiclass", "softmax", 8)[1]["numerics.train_loss_path"] == "logits"


def _saturated(head, task="multiclass", precision="float32"):
    """A model whose head makes huge logits: the wrong class wins by a mile on every example."""
    keras.utils.set_random_seed(0)
    model = compile_model(build_model(2, 3, [4], head, task=task, precision=precision), head, 0.001, task=task,
                          precision=precision)
    x = np.abs(np.random.default_rng(0).normal(size=(16, 2))).astype(np.float32) + 1
    kernel, bias = head_weights(model)
    model.get_layer("hidden_0").set_weights([np.eye(2, 4, dtype=np.float32), np.zeros(4, np.float32)])
    big = np.zeros_like(kernel)
    big[:, 0] = 40.0
    model.get_layer("head").set_weights([big, np.zeros_like(bias)])
    y = np.full(16, 0 if task == "binary" else 2)
    return model, x, y


@pytest.mark.parametrize("head, path", [("softmax", "logits"), ("logit", "logits"), ("softmax_strict", "probabilities")])
def test_numerics_name_the_path_and_show_the_vanishing_gradient(head, path):
    model, x, y = _saturated(head)
    metrics, tags = numerics(model, x, y, "multiclass", head, 8)
    assert tags["numerics.train_loss_path"] == path
    assert metrics["clip_ceiling_fraction"] == 1.0
    assert metrics["clip_grad_norm_probs"] == 0.0 < metrics["clip_grad_norm_logits"]
    assert metrics["loss_err_probs_max"] > 40  # clipped at 16.1 where the true loss is over 60
    assert metrics["loss_err_logits_max"] < 1e-4
    assert metrics["prob_exact0_count"] > 0 and metrics["prob_clip_band_fraction"] > 0.5
    assert metrics["probs_sum_max_error"] < 1e-6
    expected_train = metrics["loss_err_probs_max"] if path == "probabilities" else metrics["loss_err_logits_max"]
    assert metrics["loss_err_train_max"] == pytest.approx(expected_train, abs=1e-4)  # float32 ulps of a loss near 60


def test_sigmoid_head_outputs_do_not_sum_to_one_and_have_no_logits_path():
    model, x, y = _saturated("sigmoid")
    metrics, tags = numerics(model, x, y, "multiclass", "sigmoid", 8)
    assert metrics["probs_sum_max_error"] > 0.4
    assert "loss_err_logits_mean" not in metrics and tags["numerics.logits_path"].startswith("n/a")
    assert tags["numerics.train_loss_path"] == "logits"  # Keras trained it on softmax of its logits


def test_binary_strict_head_takes_the_probability_path():
    model, x, y = _saturated("sigmoid_strict", task="binary")
    metrics, tags = numerics(model, x, y, "binary", "sigmoid_strict", 8)
    assert tags["numerics.train_loss_path"] == "probabilities"
    assert metrics["clip_ceiling_fraction"] == 1.0 and metrics["clip_grad_norm_probs"] == 0.0
    assert metrics["prob_exact1_count"] > 0 and EPSILON == 1e-7


def test_a_binary_head_counts_each_probability_once_and_never_as_one_minus_p():
    """p < 3e-8 for every example: in the clip band once each, and never exactly 1.0 (1 - p in
    float32 is, and used to be counted)."""
    model, x, y = _saturated("sigmoid", task="binary")
    kernel, bias = head_weights(model)
    model.get_layer("head").set_weights([np.full_like(kernel, -10.0), bias])  # z = -10 * (x0 + x1) < -20
    metrics, _ = numerics(model, x, y, "binary", "sigmoid", 8)
    probs = np.asarray(model(x))
    assert (probs > 0).all() and (probs < 3e-8).all() and (np.float32(1) - probs == 1).all()
    assert metrics["prob_exact1_count"] == 0 and metrics["prob_exact0_count"] == 0
    assert metrics["prob_clip_band_count"] == len(x) and metrics["prob_clip_band_fraction"] == 1.0
    assert "probs_sum_max_error" not in metrics and "argmax_tie_count" not in metrics


def test_a_binary_logit_heads_rest_probability_is_sigmoid_of_minus_z():
    from helpers import class_probabilities

    z = np.array([[20.0], [-3.0]], dtype=np.float32)
    rest, positive = class_probabilities(z, "binary", "logit").T
    assert positive[0] == 1.0 and rest[0] == pytest.approx(np.exp(-20.0), rel=1e-6)  # 1 - p would be 0
    assert rest[1] + positive[1] == pytest.approx(1.0)
    p = np.array([[3e-9]], dtype=np.float32)
    assert class_probabilities(p, "binary", "sigmoid")[0, 0] < 1.0  # float32's 1 - p is exactly 1


def test_saturated_sigmoid_outputs_tie_at_one_where_the_logits_do_not():
    """The multi-class sigmoid head puts two classes at exactly 1.0: argmax takes the first, the
    logit head's softmax of the same logits still knows which is larger."""
    from logitlab.evaluate.numerics import argmax_ties

    outcome = {}
    for head in ("sigmoid", "logit"):
        model, x, y = _saturated(head)
        kernel, bias = head_weights(model)
        kernel[:, 1] = 45.0  # class 1's logit beats class 0's by 5 * (x0 + x1) > 10
        model.get_layer("head").set_weights([kernel, bias])
        metrics, _ = numerics(model, x, y, "multiclass", head, 8)
        outcome[head] = metrics["argmax_tie_fraction"]
        probs = np.asarray(model(x)) if head == "sigmoid" else softmax(np.asarray(model(x)))
        assert argmax_ties(probs).all() == (head == "sigmoid")
        assert (probs.argmax(axis=1) == (0 if head == "sigmoid" else 1)).all()
    assert outcome == {"sigmoid": 1.0, "logit": 0.0}


def test_the_strict_heads_training_loss_sits_at_the_clip_ceiling():
    """On examples the model gets wrong by a mile, the strict head's own loss is stuck at
    -log(1e-7), while the rescued softmax head's loss is the true one, from its logits."""
    from logitlab.evaluate.numerics import training_path_loss

    strict_model, x, y = _saturated("softmax_strict")
    strict = training_path_loss(strict_model, x, y, "multiclass", 8)
    np.testing.assert_allclose(strict, CLIP_CEILING, rtol=1e-6)
    softmax_model, _, _ = _saturated("softmax")
    rescued = training_path_loss(softmax_model, x, y, "multiclass", 8)
    assert (rescued > 40).all()
    np.testing.assert_allclose(rescued, reference_loss(_logits(softmax_model, x), y, "multiclass", "softmax"), rtol=1e-5)


def _logits(model, x):
    from logitlab.model.build import head_inputs

    kernel, bias = head_weights(model)
    return head_inputs(model, x, 8) @ kernel + bias
