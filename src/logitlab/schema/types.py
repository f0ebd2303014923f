"""The config's types: every key, its type and its default, as dataclasses Hydra's ConfigStore holds
(`logitlab_schema`, the first entry of conf/config.yaml's defaults list), so composition itself
refuses an unknown key and a value of the wrong type. What types cannot say is checked in
`logitlab.schema.check`.

Datasets and heads are plug-ins: each entry of `datasets` and `heads` names the class that serves it
(`_target_`, instantiated with Hydra's `hydra.utils.instantiate`), with the settings every dataset or
head has typed here; a dataset's own `fetch` and `preprocess` settings are typed by its class
(logitlab.data.dataset.Dataset). Nothing here imports a plug-in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from omegaconf import MISSING

SCHEMA_NAME = "logitlab_schema"
PARAMS_FILE = "params.yaml"
CONF_DIR = "conf"


class Task(StrEnum):
    multiclass = "multiclass"
    binary = "binary"


class TrainerName(StrEnum):
    fit = "fit"                      # Keras fit's contract, epochs in graph functions (logitlab.train.fast_fit)
    gradient_tape = "gradient_tape"  # the reference's hand-written loop (logitlab.train.tape)


class OptimizerName(StrEnum):
    adam = "adam"


class Activation(StrEnum):
    relu = "relu"
    sigmoid = "sigmoid"
    tanh = "tanh"
    gelu = "gelu"
    linear = "linear"


class Precision(StrEnum):
    """Keras dtype policies: what the layers compute in (variables stay float32 in the mixed ones)."""

    float32 = "float32"
    float64 = "float64"
    mixed_float16 = "mixed_float16"
    mixed_bfloat16 = "mixed_bfloat16"


class TrainOn(StrEnum):
    train = "train"  # the training split (its last validation_split held out for validation)
    all = "all"      # every example, training and test split joined in the fetched order (the blobs notebooks)


class EvaluateOn(StrEnum):
    test = "test"    # the test split
    train = "train"  # the examples trained on (the blobs notebooks print their statistics on them)


class ReportRuns(StrEnum):
    pipeline = "pipeline"       # the variants the DVC pipeline trained, read from its files
    experiment = "experiment"   # every finished run of the MLflow experiment (sweeps included)


class Layout(StrEnum):
    job = "job"            # the Hydra job's directory (runs and sweeps)
    pipeline = "pipeline"  # paths.models/<variant>/, paths.metrics/<variant>.json, ... (the DVC stages)


@dataclass
class BinaryConf:
    positive_class: int = 0


@dataclass
class DatasetConf:
    """What every dataset has. `_target_` is its class (a logitlab.data.dataset.Dataset), which types and
    checks its own `fetch` and `preprocess` settings."""

    _target_: str = MISSING
    name: str = MISSING
    num_classes: int = MISSING
    batch_size: int = MISSING
    binary: BinaryConf = field(default_factory=BinaryConf)
    fetch: dict[str, Any] = field(default_factory=dict)
    preprocess: dict[str, Any] = field(default_factory=dict)


@dataclass
class HeadConf:
    """A classifier head: `_target_` is its class (logitlab.model.heads.Head, or a subclass), the
    rest what it is. `options`: a subclass's own settings, passed to it as they are."""

    _target_: str = "logitlab.model.heads.Head"
    activation: str | None = None   # of the last Dense layer (a Keras activation name); null: linear
    from_logits: bool = False       # what the loss is told: the outputs are logits
    detached: bool = False          # Keras's attached logits cut off: the loss sees probabilities
    tasks: list[Task] = field(default_factory=lambda: [Task.multiclass])  # the tasks it serves
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConf:
    name: str = "mlp"
    layers: list[int] = field(default_factory=lambda: [25, 15])
    activation: Activation = Activation.relu
    head: str = "logit"


@dataclass
class TrainerConf:
    name: TrainerName = TrainerName.fit
    epochs: int = 10
    batch_size: int | None = None
    validation_split: float = 0.1
    steps_per_execution: int = 32
    jit_compile: Any = "auto"  # true | false | auto (OmegaConf has no bool-or-string type)
    shuffle_buffer: int = 1024
    log_every_n_steps: int = 100
    max_loss: float | None = 1e6
    verbose: int = 2
    train_on: TrainOn = TrainOn.train
    checkpoint: Any = "auto"  # true | false | auto (inside a SLURM job): resume a requeued job (logitlab.train.checkpoint)


@dataclass
class OptimizerConf:
    name: OptimizerName = OptimizerName.adam
    lr: float = 0.001


@dataclass
class TrackingConf:
    uri: str | None = None
    experiment: str = "logitlab"
    retries: int = 3
    backoff_s: float = 1.0
    timeout_s: int = 10
    register: bool | None = None  # the model registry: null, the DVC stages only (layout=pipeline)


@dataclass
class TapePipeline:
    datasets: list[str] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)
    overrides: str = ""  # Hydra overrides the train_tape stages add (the reference notebook's own model)


@dataclass
class PipelineConf:
    datasets: list[str] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)
    binary_heads: list[str] = field(default_factory=list)
    gradient_tape: TapePipeline = field(default_factory=TapePipeline)


@dataclass
class PathsConf:
    raw: str = "data/raw"
    processed: str = "data/processed"
    models: str = "models"
    metrics: str = "metrics"
    history: str = "history"
    predictions: str = "predictions"
    report: str = "report"


@dataclass
class ReportConf:
    runs: ReportRuns = ReportRuns.pipeline
    out_dir: str | None = None
    digits: int = 8


@dataclass
class EvaluateConf:
    n_examples: int = 5
    batch_size: int = 1024
    split: EvaluateOn = EvaluateOn.test


@dataclass
class SweepConf:
    resume: bool = False  # skip every job whose config already has a FINISHED run in the experiment


@dataclass
class Config:
    datasets: dict[str, DatasetConf] = field(default_factory=dict)  # every dataset's settings, always present
    heads: dict[str, HeadConf] = field(default_factory=dict)        # every head, always present
    model: ModelConf = field(default_factory=ModelConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    optimizer: OptimizerConf = field(default_factory=OptimizerConf)
    tracking: TrackingConf = field(default_factory=TrackingConf)
    experiment: str | None = None  # the conf/experiment/ file a run was composed with (set by the file)
    dataset: str = "mnist"
    task: Task = Task.multiclass
    precision: Precision = Precision.float32
    seed: int = 0
    pipeline: PipelineConf = field(default_factory=PipelineConf)
    paths: PathsConf = field(default_factory=PathsConf)
    layout: Layout = Layout.job
    report: ReportConf = field(default_factory=ReportConf)
    evaluate: EvaluateConf = field(default_factory=EvaluateConf)
    sweep: SweepConf = field(default_factory=SweepConf)

    # ------------------------------------------------------------------ derived, never configured

    @property
    def ds(self) -> DatasetConf:
        """The settings of the dataset this job uses."""
        return self.datasets[self.dataset]

    @property
    def batch_size(self) -> int:
        """trainer.batch_size, or the dataset's own when that is null."""
        return self.trainer.batch_size or self.ds.batch_size

    @property
    def variant(self) -> str:
        """dataset x task x head x trainer x precision: mnist-logit, blobs-binary-sigmoid_strict,
        mnist-logit-gradient_tape, mnist-softmax-mixed_float16 (the defaults go unnamed)."""
        parts = [self.dataset, None if self.task == Task.multiclass else str(self.task), self.model.head,
                 None if self.trainer.name == TrainerName.fit else str(self.trainer.name),
                 None if self.precision == Precision.float32 else str(self.precision)]
        return "-".join(p for p in parts if p)

    @property
    def registers(self) -> bool:
        """Whether this job registers its model: tracking.register, by default in the DVC stages only."""
        return self.layout == Layout.pipeline if self.tracking.register is None else self.tracking.register

    @property
    def stage(self) -> str:
        """The DVC stage that trains this variant (dvc.yaml's matrices)."""
        family = ("train_tape" if self.trainer.name == TrainerName.gradient_tape
                  else "train_binary" if self.task == Task.binary else "train")
        return f"{family}@{self.dataset}-{self.model.head}"

    def path(self, root: Path, kind: str, dataset: str | None = None) -> Path:
        """paths.<kind> under the project root; for raw and processed, the dataset's .npz in it."""
        base = under_root(root, getattr(self.paths, kind))
        return base / f"{dataset or self.dataset}.npz" if kind in ("raw", "processed") else base


def under_root(root: Path, path: str | os.PathLike) -> Path:
    """A configured path: absolute as given, relative to the project root otherwise (never the cwd)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else root / path
