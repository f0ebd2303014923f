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


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """The small pipeline run once from nothing with a plain serial `dvc repro` (make repro JOBS=1),
    shared by the end-to-end tests: each copies the finished project (`shutil.copytree(..,
    symlinks=True)`) instead of running its own. `base` is the same project before the run."""
    import shutil
    import sys

    from helpers import repro, tiny_project_from_nothing

    tmp = tmp_path_factory.mktemp("tiny-pipeline")
    base = tiny_project_from_nothing(tmp / "base", tmp)
    serial = tmp / "serial"
    shutil.copytree(base, serial, symlinks=True)
    run, seconds = repro(serial, 1)
    print(f"\nthe tiny pipeline from nothing, serial: {seconds:.1f} s", file=sys.stderr)
    return {"base": base, "serial": serial, "serial_run": run, "serial_s": seconds}
