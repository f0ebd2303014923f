"""The two heads: probabilities that sum to 1, and logits whose softmax is the softmax head."""

import keras
import numpy as np
import pytest

from logitlab.evaluate.registry import REGISTRY, Evaluated, compute, metric, names
from helpers import build_model, compile_model, loss_for, probabilities
from logitlab.model.heads import softmax


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32) * 3


def test_softmax_head_outputs_sum_to_one(x):
    keras.utils.set_random_seed(1)
    model = build_model(8, 5, [16, 8], "softmax")
    out = model.predict(x, verbose=0)
    assert out.shape == (64, 5) and out.min() >= 0
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)


def test_logit_head_is_the_softmax_head_before_its_softmax(x):
    keras.utils.set_random_seed(1)
    soft = build_model(8, 5, [16, 8], "softmax")
    logit = build_model(8, 5, [16, 8], "logit")
    logit.set_weights(soft.get_weights())
    logits = logit.predict(x, verbose=0)
    assert (logits < 0).any() and not np.allclose(logits.sum(axis=1), 1.0)
    np.testing.assert_allclose(softmax(logits), soft.predict(x, verbose=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(probabilities(logits, "multiclass", "logit"), softmax(logits))


def test_each_head_gets_the_matching_loss():
    assert loss_for("logit").get_config()["from_logits"] is True
    assert loss_for("softmax").get_config()["from_logits"] is False
    assert loss_for("softmax_strict").get_config()["from_logits"] is False
    assert isinstance(loss_for("logit", "binary"), keras.losses.BinaryCrossentropy)
    assert loss_for("logit", "binary").get_config()["from_logits"] is True
    assert loss_for("sigmoid_strict", "binary").get_config()["from_logits"] is False
    model = compile_model(build_model(2, 3, [4], "logit"), "logit", lr=0.01)
    assert model.loss.get_config()["from_logits"] is True
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.01)


def test_stable_softmax_survives_large_logits():
    z = np.array([[1000.0, 0.0, -1000.0], [30.0, 0.0, -30.0]], dtype=np.float32)
    p = softmax(z)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    assert p[0, 0] == 1.0 and p[0, 2] == 0.0


def _evaluated(outputs, head="logit", task="multiclass", labels=None):
    from helpers import head as head_named

    h = head_named(head)
    labels = np.zeros(len(outputs), np.int64) if labels is None else labels
    return Evaluated(outputs, h.probabilities(outputs, task), labels, h, task, {"loss": 0.25, "accuracy": 0.5})


def test_the_registry_reports_raw_and_probability_extremes():
    outputs = np.array([[2.0, -1.0], [-3.0, 5.0]], dtype=np.float32)
    stats = compute(_evaluated(outputs))
    assert stats["output_min"] == -3.0 and stats["output_max"] == 5.0
    assert stats["prob_max"] == pytest.approx(1 / (1 + np.exp(-8)), rel=1e-6)
    assert stats["prob_min"] == pytest.approx(1 / (1 + np.exp(8)), rel=1e-5)
    assert stats["test_loss"] == 0.25 and stats["test_accuracy"] == 0.5
    assert "test_loss_f64" not in stats, "no numerics were given: a metric that does not apply is left out"


def test_a_new_metric_is_one_function_and_the_table_and_study_take_it(monkeypatch):
    """Registered once, a metric is computed for every run and listed where its flags say, in order."""
    monkeypatch.setattr("logitlab.evaluate.registry.REGISTRY", dict(REGISTRY))

    @metric(label="top-2 accuracy", study=True, fraction=True, higher_is_better=True)
    def top2_accuracy(ev):
        top2 = np.argsort(ev.probs, axis=1)[:, -2:]
        return float((top2 == ev.labels[:, None]).any(axis=1).mean())

    outputs = np.array([[3.0, 2.0, -9.0], [3.0, -9.0, 2.0], [3.0, 2.0, 1.0]], dtype=np.float32)
    stats = compute(_evaluated(outputs, labels=np.array([1, 1, 2])))
    assert stats["top2_accuracy"] == pytest.approx(1 / 3)
    assert names(table=True)[-1] == "top2_accuracy" and "top2_accuracy" in names(study=True)
    with pytest.raises(ValueError, match="registered twice"):
        metric("top2_accuracy")(lambda ev: 0.0)


def test_strict_heads_detach_the_logits_and_survive_save_and_load(x, tmp_path):
    import tensorflow as tf

    keras.utils.set_random_seed(1)
    strict = build_model(8, 5, [16], "softmax_strict")
    assert hasattr(build_model(8, 5, [16], "softmax")(tf.constant(x)), "_keras_logits")
    assert not hasattr(strict(tf.constant(x)), "_keras_logits")
    strict.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.layers[-1].__class__.__name__ == "DetachLogits"
    np.testing.assert_allclose(loaded.predict(x, verbose=0), strict.predict(x, verbose=0))


def test_binary_heads_have_one_output_and_sigmoid_sums_do_not_matter(x):
    keras.utils.set_random_seed(1)
    out = build_model(8, 5, [16], "sigmoid", task="binary").predict(x, verbose=0)
    assert out.shape == (64, 1) and 0 <= out.min() and out.max() <= 1
    multi = build_model(8, 5, [16], "sigmoid").predict(x, verbose=0)
    assert np.abs(multi.sum(axis=1) - 1).max() > 0.1  # the mismatched head's outputs do not sum to 1


def test_a_head_entry_whose_class_is_no_head_is_one_line():
    from helpers import ROOT
    from logitlab.errors import UserError
    from logitlab.model.heads import head_of
    from logitlab.schema import compose

    with pytest.raises(UserError, match=r"^heads.logit: 'logitlab.data.blobs.Blobs' is not a logitlab.model.heads.Head$"):
        head_of(compose(ROOT, ["heads.logit._target_=logitlab.data.blobs.Blobs"]))
    with pytest.raises(UserError, match=r"^heads.logit: cannot find the class 'mypkg.Nope'"):
        head_of(compose(ROOT, ["heads.logit._target_=mypkg.Nope"]))
