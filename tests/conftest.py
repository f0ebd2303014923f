"""Shared fixtures. Nothing a test starts talks to anything but 127.0.0.1."""

import os

# Before anything imports MLflow or DVC: no telemetry, and TensorFlow's C++ start-up chatter off.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("LOGITLAB_MNIST_FILE", None)

import threading  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from helpers import ROOT  # noqa: E402


@pytest.fixture
def root():
    return ROOT


class LoopbackServer:
    """Serves registered bodies on 127.0.0.1; a route may announce more bytes than it sends."""

    def __init__(self):
        self.routes = {}
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path not in routes:
                    self.send_error(404)
                    return
                body, announced = routes[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(announced))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, path, body, *, announced=None):
        self.routes[path] = (body, len(body) if announced is None else announced)
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_server():
    server = LoopbackServer()
    yield server
    server.close()


@pytest.fixture
def hydra_loader():
    """Hydra's config loader over conf/, as a `train.py` app's (job name `train`) holds it."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from logitlab.schema import register

    register()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3", job_name="train"):
        yield GlobalHydra.instance().config_loader()


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory, worker_id):
    """The small pipeline run once from nothing with a plain serial `dvc repro` (make repro JOBS=1),
    shared by the end-to-end tests: each copies the finished project (`shutil.copytree(..,
    symlinks=True)`) instead of running its own. `base` is the same project before the run.

    `make test` runs pytest-xdist's workers, each with its own session: the first to ask builds the
    pipeline in the run's shared temporary folder under a file lock (pytest-xdist's documented
    recipe for a session fixture made once), and the others wait for it and read its record."""
    import json
    import shutil
    import subprocess
    import sys

    from filelock import FileLock

    from helpers import repro, tiny_project_from_nothing

    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        shared = shared.parent  # the folder all workers' base temps are in
    tmp, record = shared / "tiny-pipeline", shared / "tiny-pipeline.json"
    with FileLock(str(shared / "tiny-pipeline.lock")):
        if not record.is_file():
            shutil.rmtree(tmp, ignore_errors=True)  # what a worker that failed to build it left
            tmp.mkdir()
            base = tiny_project_from_nothing(tmp / "base", tmp)
            serial = tmp / "serial"
            shutil.copytree(base, serial, symlinks=True)
            run, seconds = repro(serial, 1)
            print(f"\nthe tiny pipeline from nothing, serial: {seconds:.1f} s", file=sys.stderr)
            record.write_text(json.dumps({"base": str(base), "serial": str(serial), "serial_s": seconds,
                                          "args": run.args, "stdout": run.stdout, "stderr": run.stderr}))
    made = json.loads(record.read_text())
    return {"base": Path(made["base"]), "serial": Path(made["serial"]), "serial_s": made["serial_s"],
            "serial_run": subprocess.CompletedProcess(made["args"], 0, made["stdout"], made["stderr"])}
