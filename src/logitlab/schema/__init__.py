"""The config's schema, one module per job:

- `types`: every key, its type and its default (dataclasses in Hydra's ConfigStore), and the values
  derived from them (`Config.variant`, `Config.stage`, paths under the project root);
- `check`: the composed config loaded and checked once, before any work (`load`);
- `messages`: one line for each value the schema refuses;
- `compose`: conf/ composed, params.yaml written from it and checked against it;
- `flat`: the config as MLflow params, and the hash that says two jobs train the same thing.

Below the rest of the package: it imports only `errors` and `files`.
"""

from logitlab.schema.check import check, load
from logitlab.schema.compose import (
    compose,
    compose_params,
    params_drift,
    register,
    write_params,
)
from logitlab.schema.flat import NOT_HASHED, config_hash, flatten, group_hash, run_params
from logitlab.schema.messages import composition_error, config_error, unknown_key
from logitlab.schema.types import (
    CONF_DIR,
    PARAMS_FILE,
    SCHEMA_NAME,
    Activation,
    BinaryConf,
    Config,
    DatasetConf,
    EvaluateConf,
    EvaluateOn,
    HeadConf,
    Layout,
    OptimizerConf,
    OptimizerName,
    PathsConf,
    PipelineConf,
    Precision,
    ReportConf,
    ReportRuns,
    SweepConf,
    Task,
    TrackingConf,
    TrainerConf,
    TrainerName,
    TrainOn,
    under_root,
)

__all__ = [
    "CONF_DIR", "NOT_HASHED", "PARAMS_FILE", "SCHEMA_NAME", "Activation", "BinaryConf", "Config", "DatasetConf",
    "EvaluateConf", "EvaluateOn", "HeadConf", "Layout", "OptimizerConf", "OptimizerName", "PathsConf",
    "PipelineConf", "Precision", "ReportConf", "ReportRuns", "SweepConf", "Task", "TrackingConf", "TrainOn",
    "TrainerConf", "TrainerName", "check", "compose", "compose_params", "composition_error", "config_error",
    "config_hash", "flatten", "group_hash", "load", "params_drift", "register", "run_params", "under_root", "unknown_key",
    "write_params",
]
