"""MLflow-native models: every head's logged model serves one contract (a probability per class and
the predicted class), the registry's aliases and champion, model URIs checked in one line, and a
real `mlflow models serve` answering on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit, softmax

from helpers import PYTHON, ROOT, app, build_model, head, subprocess_env, tiny_mnist, wait_for_http


def _heads():
    from logitlab.schema import compose

    return compose(ROOT).heads


# Every head of conf/heads/ for every task it serves: a new head is tested without editing this file.
ALL_HEADS = [(str(task), name) for name, spec in _heads().items() for task in spec.tasks]
LOGIT_HEADS = {name for name, spec in _heads().items() if spec.from_logits}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import mlflow

    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("serving-tests")
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).normal(0, 3, size=(64, 6)).astype(np.float32)


def logged(task: str, name: str, x: np.ndarray, seed: int = 0):
    """A model of the head `name` (random weights, large enough to saturate), logged in a run of its own."""
    import keras
    import mlflow

    from logitlab.serving.pyfunc import log_model

    keras.utils.set_random_seed(seed)
    model = build_model(x.shape[1], 5, [16], name, task=task)
    with mlflow.start_run() as run:
        info = log_model(model, name=f"{task}-{name}", task=task, head=head(name), n_classes=5, example=x,
                         tags={"head": name}, params={"seed": str(seed)}, step=0)
    return model, info, run.info.run_id


@pytest.mark.parametrize("task, name", ALL_HEADS)
def test_every_head_serves_probabilities_and_the_class_and_keeps_its_raw_outputs(store, x, task, name):
    import mlflow

    model, info, _ = logged(task, name, x)
    raw = np.asarray(model(x, training=False))
    served = mlflow.pyfunc.load_model(info.model_uri).predict(x)

    probs = (expit(raw) if task == "binary" else softmax(raw, axis=1)) if name in LOGIT_HEADS else raw
    per_class = np.concatenate([1 - probs, probs], axis=1) if task == "binary" else probs
    k = per_class.shape[1]
    assert list(served.columns) == [f"prob_{i}" for i in range(k)] + ["class"]
    np.testing.assert_allclose(served[[f"prob_{i}" for i in range(k)]].to_numpy(), per_class, rtol=1e-5, atol=1e-7)
    expected_class = (probs[:, 0] >= 0.5).astype(int) if task == "binary" else per_class.argmax(axis=1)
    np.testing.assert_array_equal(served["class"].to_numpy(), expected_class)
    if head(name).softmax_of_logits(task):  # one sigmoid per class need not sum to 1
        np.testing.assert_allclose(per_class.sum(axis=1), 1, rtol=1e-5)

    keras_again = mlflow.keras.load_model(info.model_uri)  # the Keras flavor: the raw outputs, as trained
    np.testing.assert_allclose(np.asarray(keras_again(x, training=False)), raw, rtol=1e-6)


@pytest.mark.slow  # a new Python process per head
@pytest.mark.parametrize("task, name", [(t, n) for t, n in ALL_HEADS if head(n).detached])
def test_a_detached_head_loads_in_a_new_process_that_imported_nothing_of_logitlab(store, x, tmp_path, task, name):
    """A strict head's Keras model holds logitlab's DetachLogits layer: MLflow's loader must register it
    (a process that loads the model first, as `mlflow models serve` and a user's script do)."""
    _, info, _ = logged(task, name, x)
    np.save(tmp_path / "x.npy", x)
    script = ("import sys, mlflow, numpy as np; mlflow.set_tracking_uri(sys.argv[1]); "
              "print(mlflow.pyfunc.load_model(sys.argv[2]).predict(np.load(sys.argv[3])).shape)")
    proc = subprocess.run([PYTHON, "-c", script, store, info.model_uri, str(tmp_path / "x.npy")], capture_output=True,
                          text=True, timeout=300, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str((len(x), (2 if task == "binary" else 5) + 1))


def test_a_model_logged_from_its_saved_file_is_that_file_and_serves_as_the_model(store, x, tmp_path):
    """The train stage logs the .keras file it has just written (`saved=`) instead of saving the
    model again: the logged model's file is that file, byte for byte, and it loads and serves."""
    import keras
    import mlflow

    from logitlab.serving.pyfunc import log_model

    keras.utils.set_random_seed(0)
    model = build_model(x.shape[1], 5, [16], "softmax_strict", task="multiclass")  # a custom layer inside
    model.save(tmp_path / "model.keras")
    with mlflow.start_run():
        info = log_model(model, name="from-file", task="multiclass", head=head("softmax_strict"), n_classes=5,
                         example=x, tags={}, params={}, step=0, saved=tmp_path / "model.keras")
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    assert (local / "data" / "model.keras").read_bytes() == (tmp_path / "model.keras").read_bytes()
    raw = np.asarray(model(x, training=False))
    np.testing.assert_array_equal(np.asarray(mlflow.keras.load_model(info.model_uri)(x, training=False)), raw)
    served = mlflow.pyfunc.load_model(info.model_uri).predict(x)
    np.testing.assert_allclose(served[[f"prob_{i}" for i in range(5)]].to_numpy(), raw, rtol=1e-6)


def test_a_model_that_fails_to_save_is_logged_failed_not_left_pending(store, x, tmp_path):
    """The logged model exists before its files: a failure in between marks it FAILED, as
    MLflow's Model.log does, and the error goes on."""
    import mlflow

    from logitlab.serving.pyfunc import log_model

    model = build_model(x.shape[1], 5, [16], "logit", task="multiclass")
    with mlflow.start_run() as run, pytest.raises(FileNotFoundError, match="gone.keras"):
        log_model(model, name="unsaved", task="multiclass", head=head("logit"), n_classes=5, example=x, tags={},
                  params={}, step=0, saved=tmp_path / "gone.keras")
    [found] = mlflow.search_logged_models(filter_string="name = 'unsaved'", output_format="list")
    assert found.status == "FAILED" and found.source_run_id == run.info.run_id


def test_a_logit_head_serves_where_a_naive_softmax_overflows(store, x):
    import mlflow

    _, info, _ = logged("multiclass", "logit", x)
    huge = np.full((1, x.shape[1]), 1e4, dtype=np.float32)  # logits in the thousands
    served = mlflow.pyfunc.load_model(info.model_uri).predict(huge)
    values = served[[c for c in served.columns if c.startswith("prob_")]].to_numpy()
    assert np.isfinite(values).all() and values.sum() == pytest.approx(1.0)


def test_the_logged_model_has_a_signature_an_example_and_pinned_requirements(store, x):
    import mlflow

    _, info, run_id = logged("multiclass", "logit", x)
    model = mlflow.models.get_model_info(info.model_uri)
    assert model.signature.inputs.to_dict() == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 6)}}]
    assert [c["name"] for c in model.signature.outputs.to_dict()] == [f"prob_{i}" for i in range(5)] + ["class"]
    assert set(model.flavors) == {"keras", "python_function"}
    assert model.flavors["python_function"]["loader_module"] == "logitlab.serving.pyfunc"
    local = mlflow.artifacts.download_artifacts(info.model_uri)
    example = json.loads(open(f"{local}/input_example.json").read())
    np.testing.assert_allclose(np.asarray(example, dtype=np.float32), x[:2])
    requirements = open(f"{local}/requirements.txt").read().split()
    assert any(r.startswith("keras==") for r in requirements) and any(r.startswith("mlflow==") for r in requirements)
    found = mlflow.get_logged_model(info.model_id)
    assert found.source_run_id == run_id and found.status == "READY" and found.params == {"seed": "0"}
    assert found.tags["head"] == "logit"
    [output] = mlflow.get_run(run_id).outputs.model_outputs
    assert (output.model_id, output.step) == (info.model_id, 0)


def register(x, name: str, loss: float, task: str = "multiclass", trainer: str = "fit", layers=(16,)):
    from logitlab.serving.registry import register

    _, info, run_id = logged(task, name, x)
    metrics = {"test_loss": loss, "test_accuracy": 0.9, "test_loss_f64": loss}
    return register(info.model_id, run_id, dataset="toy", task=task, layers=layers, activation="relu",
                    head=head(name), trainer=trainer, variant=f"toy-{name}", metrics=metrics)


@pytest.fixture(scope="module")
def toy_registry(store, x):
    """Seven versions registered one after another, as seven train jobs would; what each registration said."""
    return [register(x, "softmax", 0.30), register(x, "logit", 0.30), register(x, "sigmoid", 0.50),
            register(x, "logit", 0.40, trainer="gradient_tape"), register(x, "softmax", 0.10),
            register(x, "logit", 0.2, task="binary"), register(x, "logit", 0.05, trainer="gradient_tape", layers=(64, 32))]


def test_the_registry_has_an_alias_per_head_and_crowns_the_lowest_loss(store, toy_registry):
    import mlflow

    client = mlflow.MlflowClient()
    first, tie, sigmoid, tape, better, binary, bigger = toy_registry
    assert (first.name, first.version, first.alias, first.champion) == ("logitlab-toy-16-relu", "1", "softmax",
                                                                        "softmax")
    assert tie.champion == "logit", "a tie goes to the head that outputs logits"
    assert sigmoid.champion == "logit"
    assert tape.alias == "logit_gradient_tape" and tape.champion == "logit"
    assert (better.version, better.champion) == ("5", "softmax"), "the head's alias moves to its latest version"
    aliases = {k: str(v) for k, v in client.get_registered_model("logitlab-toy-16-relu").aliases.items()}
    assert aliases == {"softmax": "5", "logit": "2", "sigmoid": "3", "logit_gradient_tape": "4", "champion": "5"}
    assert binary.name == "logitlab-toy-binary-16-relu"
    version = client.get_model_version("logitlab-toy-16-relu", "5")
    assert version.tags["logitlab.variant"] == "toy-softmax" and float(version.tags["logitlab.test_loss_f64"]) == 0.1
    # the logged model names its version, as the Models tab's "Registered models" column reads it
    logged = client.get_logged_model(str(version.source).removeprefix("models:/"))
    linked = json.loads(logged.tags["mlflow.modelVersions"])
    assert linked == [{"name": "logitlab-toy-16-relu", "version": 5}]
    # another network is another registered model: its lower loss crowns only its own versions
    assert (bigger.name, bigger.version, bigger.champion) == ("logitlab-toy-64-32-relu", "1", "logit_gradient_tape")
    assert client.get_registered_model("logitlab-toy-16-relu").aliases["champion"] == 5


@pytest.mark.parametrize("uri, message", [
    ("models:/logitlab-nope@champion", "no registered model 'logitlab-nope' in the tracking store {store}; registered: "
                                       "logitlab-toy-16-relu, logitlab-toy-64-32-relu, logitlab-toy-binary-16-relu"),
    ("models:/logitlab-toy-16-relu@best", "registered model 'logitlab-toy-16-relu' has no alias 'best'; valid: "
                                          "champion, logit, logit_gradient_tape, sigmoid, softmax"),
    ("models:/logitlab-toy-16-relu/99", "registered model 'logitlab-toy-16-relu' has no version '99'; valid: 1, 2, 3, "
                                        "4, 5"),
    ("models:/logitlab-toy-16-relu", "model 'models:/logitlab-toy-16-relu' names no version; use "
                                     "models:/logitlab-toy-16-relu@ALIAS"),
    ("runs:/abc/model", "model 'runs:/abc/model' is not a registry URI"),
    ("models:/m-0123456789abcdef", "no logged model 'm-0123456789abcdef' in the tracking store {store}"),
])
def test_a_model_that_does_not_exist_is_one_line_naming_it_and_what_exists(store, toy_registry, uri, message):
    from logitlab.errors import UserError
    from logitlab.serving.registry import load

    with pytest.raises(UserError) as raised:
        load(uri, store)
    assert str(raised.value).startswith(message.format(store=store))


def test_serve_refuses_an_unknown_alias_in_one_line_before_starting_a_server(store, toy_registry):
    proc = subprocess.run([PYTHON, "-m", "logitlab", "serve", "models:/logitlab-toy-16-relu@best", "--tracking-uri",
                           store], capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "logitlab serve: error: registered model 'logitlab-toy-16-relu' has no alias 'best'; valid: champion, logit, "
        "logit_gradient_tape, sigmoid, softmax"]
    assert proc.stdout == "", "nothing was served"


@pytest.mark.slow  # a real app or server in a subprocess
@pytest.mark.parametrize("damage", ["truncated", "garbage", "no weights"])
def test_a_damaged_model_is_one_line_naming_it_and_the_stage_that_remakes_it(store, x, tmp_path, damage):
    """The logged model.keras behind a registry alias is damaged: loading it (registry.load) and serving
    it (python -m logitlab serve) each say so in one line, with the DVC stage that trains and registers
    that variant again, and exit 2 without a traceback or a server."""
    import shutil
    import zipfile
    from urllib.parse import urlparse

    import mlflow

    from logitlab.errors import UserError
    from logitlab.serving import registry

    _, info, run_id = logged("multiclass", "logit", x)
    registry.register(info.model_id, run_id, dataset=f"broken{damage[0]}", task="multiclass", layers=[16],
                      activation="relu", head=head("logit"),
                      trainer="fit", variant="broken-logit", stage="train@broken-logit",
                      metrics={"test_loss": 0.1, "test_accuracy": 0.9, "test_loss_f64": 0.1})
    folder = Path(urlparse(mlflow.get_logged_model(info.model_id).artifact_location).path)
    keras_file = folder / "data" / "model.keras"
    body = keras_file.read_bytes()
    if damage == "truncated":
        keras_file.write_bytes(body[: len(body) // 2])
    elif damage == "garbage":
        keras_file.write_bytes(b"\0" * len(body))
    else:  # a whole archive without its weights
        kept = tmp_path / "kept.keras"
        with zipfile.ZipFile(keras_file) as old, zipfile.ZipFile(kept, "w") as new:
            for member in old.namelist():
                if member != "model.weights.h5":
                    new.writestr(member, old.read(member))
        shutil.copy(kept, keras_file)
    uri = f"models:/logitlab-broken{damage[0]}-16-relu@logit"
    expected = f"model {uri} is damaged ("
    with pytest.raises(UserError) as caught:
        registry.load(uri, store)
    message = str(caught.value)
    assert message.startswith(expected) and message.endswith("; remake it: dvc repro -f train@broken-logit")
    assert "\n" not in message
    proc = subprocess.run([PYTHON, "-m", "logitlab", "serve", uri, "--tracking-uri", store],
                          capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"logitlab serve: error: {message}"]
    assert "Traceback" not in proc.stderr and proc.stdout == "", "nothing was served"


def test_serving_without_a_store_says_how_to_make_one(tmp_path):
    proc = subprocess.run([PYTHON, "-m", "logitlab", "serve", "models:/logitlab-mnist-25-15-relu@champion", "--root",
                           str(tmp_path)], capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"logitlab serve: error: no tracking store at sqlite:///{tmp_path}/mlflow.db; "
                                   "`make repro` trains and registers the models, or pass --tracking-uri (or set "
                                   "MLFLOW_TRACKING_URI)")
    assert list(tmp_path.iterdir()) == [], "no store was created"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.slow
def test_the_champion_is_served_on_loopback(tmp_path):
    """The train app registers a MNIST model; `python -m logitlab serve` (mlflow models serve) answers
    five test digits with probabilities and the Keras model's classes, and a malformed request with 400."""
    import mlflow

    data = tiny_mnist(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = subprocess_env()
    for name in ("softmax", "logit"):
        trained = subprocess.run(app("train", *data, f"model.head={name}", "trainer.epochs=2", "trainer.verbose=0",
                                     "tracking.register=true", f"tracking.uri='{uri}'",
                                     f"hydra.run.dir={tmp_path / name}"),
                                 cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert trained.returncode == 0, trained.stderr[-3000:]

    mlflow.set_tracking_uri(uri)
    keras_model = mlflow.keras.load_model("models:/logitlab-mnist-25-15-relu@champion")
    digits = np.load(tmp_path / "processed" / "mnist.npz")["x_test"][:5]
    expected = np.asarray(keras_model(digits, training=False)).argmax(axis=1)

    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([PYTHON, "-m", "logitlab", "serve", "models:/logitlab-mnist-25-15-relu@champion",
                             "--tracking-uri", uri,
                             "--port", str(port)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/ping", proc, tmp_path / "serve.log")
        status, answer = post(f"{url}/invocations", json.dumps({"inputs": digits.tolist()}).encode())
        assert status == 200, answer
        rows = answer["predictions"]
        assert len(rows) == 5
        probs = np.array([[row[f"prob_{i}"] for i in range(10)] for row in rows])
        np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
        assert [row["class"] for row in rows] == expected.tolist()
        assert (probs.argmax(axis=1) == expected).all()

        for malformed in (b"not json", json.dumps({"inputs": [[0.0, 1.0, 2.0]]}).encode()):
            status, answer = post(f"{url}/invocations", malformed)
            assert status == 400, answer
            assert answer["error_code"] in ("BAD_REQUEST", "INVALID_PARAMETER_VALUE")
        assert proc.poll() is None, "a bad request does not stop the server"
    finally:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGTERM)  # the server and the uvicorn worker it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()
        mlflow.set_tracking_uri(None)
