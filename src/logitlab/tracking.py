"""MLflow: one store per project (SQLite at the project root unless told otherwise), one experiment."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_DB = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
RUN_FILE = "run.json"
ENV_URI = "MLFLOW_TRACKING_URI"


def tracking_uri(tracking: Mapping[str, Any], root: Path) -> str:
    """tracking.uri, else $MLFLOW_TRACKING_URI, else sqlite:///<root>/mlflow.db (what `mlflow ui` in root reads)."""
    return tracking.get("uri") or os.environ.get(ENV_URI) or f"sqlite:///{(root / DEFAULT_DB).resolve()}"


def setup(tracking: Mapping[str, Any], root: Path) -> str:
    """Point MLflow at the project's store and experiment; returns the experiment id."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(tracking, root)
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; put the user's value back, or the
    # next job of a multirun in this process would take this job's store for the user's choice.
    user_env = os.environ.get(ENV_URI)
    mlflow.set_tracking_uri(uri)
    if user_env is None:
        os.environ.pop(ENV_URI, None)
    else:
        os.environ[ENV_URI] = user_env
    name = tracking["experiment"]
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        # A SQLite store keeps its artifacts beside the DB file; a server decides for itself.
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri.removeprefix("sqlite:///")).parent / ARTIFACTS_DIR).resolve().as_uri()
        try:
            mlflow.create_experiment(name, artifact_location=location,
                                     tags={"mlflow.experimentKind": "custom_model_development"})
        except MlflowException:  # created meanwhile by a concurrent job
            pass
        experiment = mlflow.get_experiment_by_name(name)
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    return experiment.experiment_id


def runs_link(experiment_id: str) -> str:
    """Where the runs table is: MLflow 3 opens experiments in its GenAI view otherwise."""
    return f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def write_run_file(run_dir: Path, info: Mapping[str, Any]) -> Path:
    from logitlab.data import atomic_path

    path = run_dir / RUN_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(dict(info), indent=2) + "\n")
    return path


def read_run_file(run_dir: Path, stage_hint: str) -> dict[str, Any]:
    from logitlab.errors import UserError

    path = run_dir / RUN_FILE
    if not path.is_file():
        raise UserError(f"{path} does not exist; train first: dvc repro {stage_hint}")
    return json.loads(path.read_text())


@contextlib.contextmanager
def resume_run(run_id: str, stage_hint: str) -> Iterator[Any]:
    """Reopen the training run in the store `setup` chose, so evaluation lands in it; a run missing
    from the store is a user error."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from logitlab.errors import UserError

    try:
        mlflow.get_run(run_id)
    except MlflowException as exc:
        raise UserError(
            f"run {run_id} is not in the tracking store {redact(mlflow.get_tracking_uri())}; "
            f"retrain it: dvc repro -f {stage_hint}"
        ) from exc
    with mlflow.start_run(run_id=run_id) as run:
        yield run


def redact(uri: str) -> str:
    """A URI without its password, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
