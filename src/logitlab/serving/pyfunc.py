"""A variant's MLflow model: the Keras flavor, and one serving contract for every head.

The model is logged with MLflow's own Keras flavor (`mlflow.keras.load_model` gives back the trained
model, whose outputs are the head's raw outputs: logits for a logit head), and its `python_function`
flavor is this module: `mlflow.pyfunc.load_model(...).predict(x)` returns, for every head, the same
columns, `prob_0` ... `prob_<k-1>` (the probability of each class; `prob_0`, `prob_1` for a binary
task) and `class` (the predicted class). A logit head's outputs go through the stable softmax
(sigmoid for binary) at prediction time, as the lesson says; a probability head's outputs pass
through as they are, so the mismatched multi-class `sigmoid` head's need not sum to 1.

Why the Keras flavor and not the TensorFlow one: the TensorFlow flavor saves a SavedModel for
TF Serving, losing Keras's layers, compile settings and the `.keras` file the pipeline already
writes; the Keras flavor keeps the very model the stage trained. Why a pyfunc loader of our own:
Keras's pyfunc returns the raw outputs, which differ in meaning from head to head.

The pyfunc loader is this module, so serving needs logitlab installed beside MLflow (`pip install
-e .`; `mlflow models serve --env-manager local` in the project's environment). MLflow's `code_paths`
would ship the package inside the model, but loading such a model drops and re-imports every module
of the package in the loading process (mlflow.utils.model_utils._add_code_to_system_path), which
would reset the state of a sweep that logs one model per job.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from logitlab.evaluate.numerics import predicted_class
from logitlab.model.heads import Head, instantiate

CLASS_COLUMN = "class"
EXAMPLE_ROWS = 2                 # rows of the input example stored with each model


def columns(task: str, n_classes: int) -> list[str]:
    """The serving contract's columns: one probability per class, then the predicted class."""
    k = 2 if task == "binary" else n_classes
    return [f"prob_{i}" for i in range(k)] + [CLASS_COLUMN]


def predict_frame(outputs: np.ndarray, task: str, head: Head) -> Any:
    """The head's raw outputs as the serving contract's DataFrame."""
    import pandas as pd

    outputs = np.asarray(outputs, dtype=np.float32)
    probs = head.probabilities(outputs, task)
    per_class = head.class_probabilities(outputs, task)
    frame = pd.DataFrame(per_class, columns=columns(task, per_class.shape[1])[:-1])
    frame[CLASS_COLUMN] = predicted_class(probs, task)
    return frame


def signature(n_features: int, task: str, n_classes: int) -> Any:
    """Input: a float32 tensor (-1, n_features), as the Keras flavor requires; output: the columns."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    names = columns(task, n_classes)
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_features))]),
                          outputs=Schema([ColSpec("float", c) for c in names[:-1]] + [ColSpec("long", CLASS_COLUMN)]))


@functools.cache  # the installed versions, read once per process (~4 ms a read)
def requirements() -> tuple[str, ...]:
    """What loading the model needs, pinned to what trained it (no inference: MLflow's would start a
    subprocess that loads the model, seconds per model)."""
    import importlib.metadata as md

    found = []
    for dist in ("mlflow", "keras", "tensorflow-cpu", "tensorflow", "numpy", "pandas", "scipy"):
        try:
            found.append(f"{dist}=={md.version(dist)}")
        except md.PackageNotFoundError:
            continue
    return tuple(found)


# --------------------------------------------------------------------------- the flavor module


class SavedKerasFile:
    """A `.keras` file already written, standing in for its model where mlflow.keras.save_model asks
    the model to save itself (`model.save(path)`, all it asks of it): the file is copied, not the
    model serialized again, and the logged model is the stage's own file, byte for byte."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    def save(self, filepath: str, **kwargs: Any) -> None:
        import shutil

        if not filepath.endswith(".keras") or kwargs:  # an export, or options the file was not saved with
            raise TypeError(f"SavedKerasFile copies a .keras file as it is; cannot save {filepath!r} with {kwargs}")
        shutil.copyfile(self.path, filepath)


def save_model(model: Any, path: str, mlflow_model: Any = None, *, task: str, head: Head,
               saved: str | os.PathLike[str] | None = None, **keras_kwargs: Any) -> None:
    """mlflow.keras.save_model, with this module as the python_function loader. `saved`: the
    model's `.keras` file, already written (the train stage's), copied instead of saving the model
    again."""
    import mlflow.keras
    from mlflow.models import Model
    from mlflow.models.model import MLMODEL_FILE_NAME
    from mlflow.pyfunc import FLAVOR_NAME as PYFUNC
    from mlflow.pyfunc import MAIN

    mlflow_model = mlflow_model if mlflow_model is not None else Model()
    mlflow_model.metadata = {**(mlflow_model.metadata or {}), "logitlab.task": task, "logitlab.head": head.name,
                             "logitlab.from_logits": head.from_logits, "logitlab.head_spec": head.spec()}
    os.makedirs(path, exist_ok=True)  # mlflow.keras.save_model writes the input example before it makes the folder
    mlflow.keras.save_model(SavedKerasFile(saved) if saved is not None else model, path, mlflow_model=mlflow_model,
                            **keras_kwargs)
    mlflow_model.flavors[PYFUNC][MAIN] = __name__
    mlflow_model.save(os.path.join(path, MLMODEL_FILE_NAME))


def log_model(model: Any, *, name: str, task: str, head: Head, n_classes: int, example: np.ndarray,
              tags: Mapping[str, str], params: Mapping[str, str], step: int,
              saved: str | os.PathLike[str] | None = None) -> Any:
    """Log `model` as an MLflow logged model of the active run, output of the run at `step`; returns
    MLflow's ModelInfo. `params`: the run's params, which the logged model carries too. `saved`: the
    model's `.keras` file if one was just written (logged as it is, not saved again).

    MLflow's `Model.log` from its public parts (`initialize_logged_model`, the run's output, the
    flavor's `save_model`, `log_model_artifacts`, `finalize_logged_model`): `Model.log` reads the
    run's params and every metric's whole history back from the store, to give the model the params
    and link it the step's metrics. The caller has both in memory: the params here, and the step's
    metrics, which it links to the model itself (RunLog.link_model). Left out as well: `Model.log`'s
    serving-input check, which would load the model back and predict the example (~0.1 s a job);
    tests/test_serving.py checks the contract for every head instead. A failure after the logged
    model is made marks it FAILED, as `Model.log` does."""
    import mlflow
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model
    from mlflow.utils.file_utils import TempDir

    run_id = mlflow.active_run().info.run_id
    logged = mlflow.initialize_logged_model(name=name, source_run_id=run_id, tags=dict(tags),
                                            params={k: str(v) for k, v in params.items()})
    client = mlflow.MlflowClient()
    try:
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=step)])
        mlflow_model = Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=run_id,
                             model_id=logged.model_id)
        with TempDir() as tmp:
            local = tmp.path("model")
            save_model(model, local, mlflow_model, task=task, head=head,
                       signature=signature(int(example.shape[1]), task, n_classes),
                       input_example=np.asarray(example[:EXAMPLE_ROWS], dtype=np.float32),
                       pip_requirements=list(requirements()), saved=saved)
            client.log_model_artifacts(logged.model_id, local)
    except BaseException:
        mlflow.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    mlflow.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return mlflow_model.get_model_info(logged)


class HeadPredictor:
    """What mlflow.pyfunc.load_model wraps: the Keras model, and the head that says what its outputs are."""

    def __init__(self, model: Any, task: str, head: Head) -> None:
        self.model, self.task, self.head = model, task, head

    def get_raw_model(self) -> Any:
        """The Keras model (raw outputs): `mlflow.pyfunc.load_model(uri).get_raw_model()`."""
        return self.model

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        from logitlab.model.build import forward

        x = data.to_numpy(dtype=np.float32) if hasattr(data, "to_numpy") else np.asarray(data, dtype=np.float32)
        return predict_frame(forward(self.model, x, 1024), self.task, self.head)


def _load_pyfunc(path: str, model_config: Any = None) -> HeadPredictor:
    """The python_function loader MLflow calls with the model's folder."""
    from mlflow.keras.load import _load_keras_model
    from mlflow.models import Model
    from mlflow.models.model import MLMODEL_FILE_NAME

    import logitlab.model.build  # noqa: F401  registers the custom layers (DetachLogits) Keras must find

    conf = Model.load(os.path.join(path, MLMODEL_FILE_NAME))
    meta = conf.metadata or {}  # written by save_model above
    return HeadPredictor(_load_keras_model(path, conf), meta["logitlab.task"], logged_head(meta))


def logged_head(meta: dict[str, Any]) -> Head:
    """The head save_model wrote into a model's metadata. A model logged before the head's spec was
    kept has its name and `from_logits` only, which is all its probabilities depend on: a probability
    head's outputs pass through, a logit head's go through softmax (sigmoid for binary)."""
    if "logitlab.head_spec" in meta:
        return instantiate(meta["logitlab.head_spec"], meta["logitlab.head"])
    return Head(name=meta["logitlab.head"], from_logits=bool(meta["logitlab.from_logits"]))
