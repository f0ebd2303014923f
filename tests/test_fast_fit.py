"""logitlab's `fit` trainer (logitlab.compiled) keeps Keras fit's contract: the same steps, metrics,
validation, callbacks and results, only faster. And the metrics it reports reach the store."""

import keras
import numpy as np
import pytest

from logitlab.errors import StoreUnavailable
from helpers import build_model, compile_model
from logitlab.schema import TrackingConf
from logitlab.tracking.runs import RunLog
from logitlab.tracking.store import setup
from logitlab.train import fast_fit as compiled

N, FEATURES, CLASSES, BATCH = 103, 6, 3, 16  # 103 examples: a partial last batch, with or without validation


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, FEATURES)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)
    return x, y


def new_model(seed=0, head="logit"):
    keras.utils.set_random_seed(seed)
    return compile_model(build_model(FEATURES, CLASSES, [8, 5], head), head, lr=0.01)


def weights(model):
    return [np.asarray(w) for w in model.get_weights()]


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("head", ["logit", "softmax_strict"])
def test_without_shuffling_it_trains_as_keras_fit_does(data, jit, head):
    """Same examples in the same order: the same steps, the same epoch metrics, the same weights."""
    x, y = data
    reference = new_model(head=head)
    expected = reference.fit(x, y, batch_size=BATCH, epochs=3, validation_split=0.2, shuffle=False, verbose=0).history
    model = new_model(head=head)
    history = compiled.fit(model, x, y, batch_size=BATCH, epochs=3, validation_split=0.2, shuffle=False,
                           steps_per_execution=2, jit_compile=jit, verbose=0).history
    assert sorted(history) == sorted(expected) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    for key in expected:
        np.testing.assert_allclose(history[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)
    steps = 3 * 6  # 82 training examples (Keras rounds the split this way): 6 batches, the last of 10
    assert int(model.optimizer.iterations) == int(reference.optimizer.iterations) == steps
    for ours, theirs in zip(weights(model), weights(reference)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)


def test_the_shuffle_is_set_by_the_seed(data):
    x, y = data
    runs = {}
    for name, seed in (("a", 0), ("again", 0), ("other", 1)):
        model = new_model()
        compiled.fit(model, x, y, batch_size=BATCH, epochs=2, seed=seed, verbose=0)
        runs[name] = weights(model)
    assert all(np.array_equal(a, b) for a, b in zip(runs["a"], runs["again"]))
    assert not all(np.array_equal(a, b) for a, b in zip(runs["a"], runs["other"]))


def test_steps_per_execution_changes_calls_not_results(data):
    x, y = data

    class Calls(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(batch)

    results = {}
    for spe in (1, 4, 1000):
        model, calls = new_model(), Calls()
        history = compiled.fit(model, x, y, batch_size=BATCH, epochs=1, steps_per_execution=spe, callbacks=[calls],
                               verbose=0)
        results[spe] = (history.history["loss"], weights(model), calls.ends)
    assert results[1][2] == [0, 1, 2, 3, 4, 5, 6], "7 steps (103 examples), one call each"
    assert results[4][2] == [3, 6] and results[1000][2] == [6], "Keras's convention: the last step of each call"
    for spe in (4, 1000):
        np.testing.assert_allclose(results[spe][0], results[1][0], rtol=1e-6)
        for a, b in zip(results[spe][1], results[1][1]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_callbacks_can_stop_training_and_history_has_what_ran(data):
    x, y = data

    class StopAfterSecondEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.stop_training = True

    model = new_model()
    history = compiled.fit(model, x, y, batch_size=BATCH, epochs=5, callbacks=[StopAfterSecondEpoch()], verbose=0)
    assert history.epoch == [0, 1]
    assert sorted(history.history) == ["accuracy", "loss"], "no validation split, no val_ metrics"
    assert int(model.optimizer.iterations) == 2 * 7


def test_binary_labels_and_keras_progress_output(data, capsys):
    x, y = data
    keras.utils.set_random_seed(0)
    model = compile_model(build_model(FEATURES, CLASSES, [8], "sigmoid", task="binary"), "sigmoid", 0.01, task="binary")
    labels = (y == 0).astype(np.float32).reshape(-1, 1)
    history = compiled.fit(model, x, labels, batch_size=BATCH, epochs=2, validation_split=0.1, verbose=2)
    assert 0.0 <= history.history["val_accuracy"][-1] <= 1.0
    out = capsys.readouterr().out
    assert "Epoch 2/2" in out and "val_loss" in out, out


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_validation_split_outside_0_1_is_refused(data, bad):
    with pytest.raises(ValueError, match="validation_split"):
        compiled.fit(new_model(), *data, batch_size=BATCH, epochs=1, validation_split=bad, verbose=0)


def tensorflow_matmul_flops(model, batch: int, training: bool) -> int:
    """TensorFlow's own count (its profiler's float-operation statistics) of the MatMul FLOPs in the
    traced graph of one training step (`model.train_step`) or one forward pass, for `batch` examples."""
    import tensorflow as tf

    inputs = tf.TensorSpec((batch, model.input_shape[-1]), tf.float32)
    if training:
        model.optimizer.build(model.trainable_variables)
        graph = tf.function(lambda x, y: model.train_step((x, y))).get_concrete_function(
            inputs, tf.TensorSpec((batch,), tf.int64)).graph
    else:
        graph = tf.function(lambda x: model(x)).get_concrete_function(inputs).graph
    profiler = tf.compat.v1.profiler
    options = profiler.ProfileOptionBuilder(profiler.ProfileOptionBuilder.float_operation()).with_empty_output().build()
    by_type = {node.name: node.float_ops for node in profiler.profile(graph, cmd="op", options=options).children}
    return by_type["MatMul"]


@pytest.mark.parametrize("features, layers, classes, head", [(784, [784, 256], 10, "logit"),
                                                              (2, [25, 15], 4, "softmax_strict")])
def test_the_flop_count_is_what_tensorflow_executes(features, layers, classes, head):
    """The benchmark's FLOP count against TensorFlow's cost analysis of the traced step: forward,
    kernel gradients, and input gradients for every layer but the first (whose input is the data)."""
    model = compile_model(build_model(features, classes, layers, head), head, lr=0.001)
    batch = 64
    widths = [features, *layers, classes]
    forward = sum(2 * a * b for a, b in zip(widths, widths[1:]))
    assert compiled.dense_flops(model) == forward
    assert compiled.training_flops(model) == 2 * forward + (forward - 2 * features * widths[1])
    assert tensorflow_matmul_flops(model, batch, training=False) == batch * compiled.dense_flops(model)
    assert tensorflow_matmul_flops(model, batch, training=True) == batch * compiled.training_flops(model)
    if layers == [784, 256]:
        assert compiled.training_flops(model) == 3_678_208  # 3.68 MFLOP, not 3 x 1.64 (4.91)


def test_xla_is_automatic_for_big_steps_only():
    small = build_model(2, 4, [25, 15], "logit")
    big = build_model(784, 10, [784, 256], "logit")
    assert not compiled.jit_enabled("auto", small, 32)
    assert compiled.jit_enabled("auto", big, 64)
    assert compiled.jit_enabled(True, small, 32) and not compiled.jit_enabled(False, big, 64)


# --------------------------------------------------------------------------- metrics to the store


@pytest.fixture
def run(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    setup(TrackingConf(uri=uri, retries=1, backoff_s=0.01, timeout_s=5), tmp_path)
    with mlflow.start_run() as active:
        yield mlflow.MlflowClient(uri), active.info.run_id


def test_metrics_sent_without_waiting_are_all_in_the_store_after_flush(run):
    client, run_id = run
    metrics = RunLog(run_id)
    for epoch in range(5):
        metrics.log({"loss": 1.0 / (epoch + 1), "accuracy": epoch / 5}, step=epoch)
    metrics.flush()
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [0, 1, 2, 3, 4]
    assert [m.value for m in client.get_metric_history(run_id, "accuracy")] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8])


@pytest.mark.parametrize("logged_by", ["this process", "an earlier process"])
def test_a_steps_metrics_are_linked_to_the_model_and_stay_one_point_in_the_run(run, logged_by):
    """What Model.log did by reading every history back: the step's metrics linked to the logged
    model, each once in the run's history. A resumed job's last epoch may have reached the run from
    the process before it: a fresh RunLog reads that one back."""
    import mlflow

    client, run_id = run
    metrics = RunLog(run_id)
    for epoch in range(3):
        metrics.log({"loss": 1.0 / (epoch + 1), "accuracy": epoch / 3}, step=epoch)
    metrics.log({"train_seconds": 1.5})  # step 0: linked along with epoch 0's, as Model.log linked them
    if logged_by == "an earlier process":
        metrics.flush()
        metrics = RunLog(run_id)
    models = {step: mlflow.initialize_logged_model(name=f"at-{step}", source_run_id=run_id).model_id for step in (0, 2)}
    for step, model_id in models.items():
        metrics.link_model(model_id, step)
    metrics.flush()
    linked = {step: {m.key: m.value for m in client.get_logged_model(model_id).metrics}
              for step, model_id in models.items()}
    assert linked[2] == {"loss": pytest.approx(1 / 3), "accuracy": pytest.approx(2 / 3)}
    assert linked[0] == {"loss": 1.0, "accuracy": 0.0, "train_seconds": 1.5}
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [0, 1, 2], "one point a step"


class _FailedWrite:
    def wait(self):
        from mlflow.exceptions import MlflowException

        raise MlflowException("database is locked")


def test_a_failed_background_write_is_sent_again(run, monkeypatch):
    client, run_id = run
    metrics = RunLog(run_id)
    real = metrics._client.log_batch
    calls = []

    def flaky(run_id, metrics=(), params=(), tags=(), synchronous=None):
        calls.append(synchronous)
        return _FailedWrite() if synchronous is False else real(run_id, metrics=metrics, params=params, tags=tags)

    monkeypatch.setattr(metrics._client, "log_batch", flaky)
    metrics.log({"loss": 0.5}, step=0)
    metrics.set_tags({"saturated": "yes"})
    metrics.flush()
    assert calls == [False, False, None, None], "sent in the background, then again synchronously"
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [0.5]
    assert client.get_run(run_id).data.tags["saturated"] == "yes"


def test_a_store_that_stays_down_fails_the_flush(run, monkeypatch):
    _, run_id = run
    metrics = RunLog(run_id)

    def down(run_id, metrics=(), params=(), tags=(), synchronous=None):
        if synchronous is False:
            return _FailedWrite()
        raise OSError("connection refused")

    monkeypatch.setattr(metrics._client, "log_batch", down)
    metrics.log({"loss": 0.5}, step=3)
    with pytest.raises(StoreUnavailable, match="failed to log step 3 metrics: connection refused"):
        metrics.flush()


@pytest.mark.parametrize("head", ["softmax", "softmax_strict", "sigmoid"])
def test_evaluate_and_forward_give_what_keras_evaluate_and_predict_give(data, head):
    """The loss still takes the head's own path (the logits of a softmax head, the clipped
    probabilities of a strict one): the same test_step, the same batches."""
    from logitlab.model.build import forward

    x, y = data
    model = new_model(head=head)
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)
    expected = model.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
    from logitlab.model.compiled import evaluate

    assert evaluate(model, x, y, BATCH) == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(forward(model, x, BATCH), model.predict(x, batch_size=BATCH, verbose=0), rtol=1e-6)
