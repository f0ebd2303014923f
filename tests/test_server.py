"""A team's tracking server: a real `mlflow server` (started as the README says, through
`python -m logitlab server`) on PostgreSQL with proxied artifacts, a sweep logging to it over HTTP,
the runs, logged models, dataset inputs and registry read back over HTTP, and no secret anywhere in
what was logged, the models' metadata and input examples included."""

import json
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from helpers import PG, accepts, app, mlflow_server, postgres_database, subprocess_env, tiny_blobs

SECRETS = {"uri": "cli-s3cret", "backend": "pg-s3cret", "password_env": "env-s3cret", "token_env": "tok-s3cret",
           "aws_env": "aws-s3cret"}


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, _, state = line.split()[1], line.split()[2], line.split()[3]
            address, hex_port = local.split(":")
            if int(hex_port, 16) == port and state == "0A":  # 0A: LISTEN
                found.add(address)
    return found


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request, tmp_path):
    """A backend store URI: a fresh PostgreSQL database (dropped afterwards), or a SQLite file."""
    if request.param == "sqlite":
        if accepts(PG["port"]):
            pytest.skip("PostgreSQL answers on 127.0.0.1:5432: the server is tested on it (SQLite is the fallback)")
        yield f"sqlite:///{tmp_path / 'server.db'}"
        return
    with postgres_database(password=SECRETS["backend"]) as uri:
        yield uri


@pytest.fixture
def server(backend, tmp_path):
    with mlflow_server(backend, tmp_path) as running:
        yield running


def rest(url: str, endpoint: str, payload: dict) -> dict:
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/{endpoint}", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_sweep_logs_to_a_tracking_server_and_leaks_no_secret(server, tmp_path):
    assert listening_addresses(server["port"]) == {"0100007F"}, "the server binds 127.0.0.1 only"

    data = tiny_blobs(tmp_path)
    env = subprocess_env(MLFLOW_TRACKING_USERNAME="alice", MLFLOW_TRACKING_PASSWORD=SECRETS["password_env"],
                         AWS_SECRET_ACCESS_KEY=SECRETS["aws_env"], LOGITLAB_TEST_TOKEN=SECRETS["token_env"])
    uri = f"http://alice:{SECRETS['uri']}@127.0.0.1:{server['port']}"
    sweep = subprocess.run(app("train", "-m", *data, "model.head=softmax,logit", "trainer.epochs=2", "tracking=server",
                               "tracking.register=true", f"tracking.uri='{uri}'", f"hydra.sweep.dir={tmp_path / 'sweep'}"),
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert sweep.returncode == 0, sweep.stderr[-3000:]

    # Read back over HTTP, with the REST API alone.
    [experiment] = [e for e in rest(server["url"], "experiments/search", {"max_results": 100})["experiments"]
                    if e["name"] == "logitlab"]
    runs = rest(server["url"], "runs/search", {"experiment_ids": [experiment["experiment_id"]],
                                               "max_results": 100})["runs"]
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs}
    [parent] = [r for r in runs if tags[r["info"]["run_id"]].get("logitlab.kind") == "sweep"]
    children = [r for r in runs if r is not parent]
    assert len(children) == 2
    parent_id = parent["info"]["run_id"]
    assert parent["info"]["status"] == "FINISHED"
    for child in children:
        child_tags = tags[child["info"]["run_id"]]
        assert child["info"]["status"] == "FINISHED"
        assert child_tags["mlflow.parentRunId"] == parent_id
        assert child_tags["logitlab.sweep_id"] == tags[parent_id]["logitlab.sweep_id"]
        metrics = {m["key"] for m in child["data"]["metrics"]}
        assert {"loss", "val_loss", "test_accuracy", "output_min", "prob_max"} <= metrics
        assert child["info"]["artifact_uri"].startswith("mlflow-artifacts:"), "artifacts go through the server"
        inputs = {d["dataset"]["name"]: d for d in child["inputs"]["dataset_inputs"]}
        assert sorted(inputs) == ["blobs-test", "blobs-train"]
        assert {t["value"] for d in inputs.values() for t in d["tags"]} == {"training", "evaluation"}
        assert len(child["outputs"]["model_outputs"]) == 1, "one logged model per job"

    # The logged models and the registry, over HTTP; a model loads from the server's artifact store.
    import mlflow

    client = mlflow.MlflowClient(server["url"])
    models = client.search_logged_models(experiment_ids=[experiment["experiment_id"]])
    assert sorted(m.name for m in models) == ["blobs-logit", "blobs-softmax"]
    assert all({"test_loss", "test_accuracy"} <= {m.key for m in model.metrics} for model in models)
    assert sorted(m.name for m in client.search_registered_models()) == ["logitlab-blobs-25-15-relu"]
    registered = client.get_registered_model("logitlab-blobs-25-15-relu")
    assert set(registered.aliases) == {"softmax", "logit", "champion"}
    by_id = {m.model_id: m for m in models}
    champion = client.get_model_version("logitlab-blobs-25-15-relu", registered.aliases["champion"])
    assert champion.tags["logitlab.variant"] in {"blobs-logit", "blobs-softmax"}
    mlflow.set_tracking_uri(server["url"])
    try:
        served = mlflow.pyfunc.load_model("models:/logitlab-blobs-25-15-relu@champion").predict(
            np.array([[-5.0, 2.0], [5.0, -2.0]], dtype=np.float32))
        model_files = []
        for model_id in by_id:
            local = Path(mlflow.artifacts.download_artifacts(f"models:/{model_id}"))
            model_files += [p for p in local.rglob("*") if p.is_file()]
    finally:
        mlflow.set_tracking_uri(None)
    assert list(served.columns) == ["prob_0", "prob_1", "prob_2", "prob_3", "class"]

    # The artifacts landed in the server's artifact store, and come back over HTTP.
    everything = []
    for r in runs:
        rid = r["info"]["run_id"]
        local = Path(client.download_artifacts(rid, "", str(tmp_path / "downloads" / rid)))
        everything += [p for p in local.rglob("*") if p.is_file()]
    everything += model_files
    names = {p.name for p in everything}
    assert {"model.keras", "MLmodel", "input_example.json", "predictions.json", "outputs.npz"} <= names
    assert any(p.name == "model.keras" for p in server["artifacts"].rglob("*"))

    # No secret in params, tags, metric names, artifacts, the jobs' logs or the output.
    logged = json.dumps(runs) + json.dumps(experiment) + repr([(m.tags, m.params) for m in models])
    blobs = [p.read_bytes() for p in everything]
    logs = [p.read_text() for p in (tmp_path / "sweep").rglob("*.log")]
    server_log = server["log"].read_text()
    for secret in SECRETS.values():
        assert secret not in logged, secret
        assert not any(secret.encode() in b for b in blobs), secret
        assert not any(secret in text for text in logs), secret
        assert secret not in sweep.stdout + sweep.stderr, secret
        assert secret not in server_log, secret
    params = {p["key"]: p["value"] for p in children[0]["data"]["params"]}
    assert params["tracking.uri"] == f"http://alice:***@127.0.0.1:{server['port']}"
    assert "cli-s3cret" not in tags[parent_id]["hydra.overrides"] and "alice:***@" in tags[parent_id]["hydra.overrides"]
