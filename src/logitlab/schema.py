"""The config's schema: every key, its type and its valid values, checked once, before any work.

The dataclasses are registered in Hydra's ConfigStore (as `logitlab_schema`, the first entry of
conf/config.yaml's defaults list), so composition itself refuses an unknown key, `+` or not, and a
value of the wrong type. The registration runs wherever Hydra composes conf/, DVC's `dvc exp run -S`
included, through the `hydra_plugins.logitlab` module Hydra imports at start-up.

`load` turns a composed config (conf/ or the params.yaml DVC stages run on) into a `Config` object:
merged onto the schema, instantiated (`OmegaConf.to_object`), then `check`ed for what types cannot
say (ranges, a head that fits the task, a dataset that exists). Hydra does not run a dataclass's
__post_init__ at composition (hydra#981), hence the explicit check. Code downstream takes the
`Config` and does not check again.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from logitlab.errors import UserError, first_line
from logitlab.model.heads import check_head

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
    """What every dataset has; each dataset adds its own `fetch` and `preprocess` settings."""

    name: str = MISSING
    num_classes: int = MISSING
    batch_size: int = MISSING
    binary: BinaryConf = field(default_factory=BinaryConf)


@dataclass
class MnistFetch:
    sources: list[Any] = field(default_factory=list)            # tried in order (logitlab.data.sources)
    timeout_s: float = 30.0
    array_sha256: dict[str, Any] | None = field(default_factory=dict)  # each canonical array's sha256; null: unchecked


@dataclass
class MnistPreprocess:
    scale: float = 255.0


@dataclass
class MnistConf(DatasetConf):
    fetch: MnistFetch = field(default_factory=MnistFetch)
    preprocess: MnistPreprocess = field(default_factory=MnistPreprocess)


@dataclass
class BlobsFetch:  # sklearn's make_blobs
    n_samples: int = 2000
    centers: list[Any] = field(default_factory=list)
    cluster_std: float = 1.0
    random_state: int = 30


@dataclass
class BlobsPreprocess:  # a stratified train/test split
    test_size: float = 0.2
    random_state: int = 0


@dataclass
class BlobsConf(DatasetConf):
    fetch: BlobsFetch = field(default_factory=BlobsFetch)
    preprocess: BlobsPreprocess = field(default_factory=BlobsPreprocess)


@dataclass
class DatasetsConf:
    """Every dataset's settings, always present, so one params.yaml drives the whole DVC matrix."""

    mnist: MnistConf = field(default_factory=MnistConf)
    blobs: BlobsConf = field(default_factory=BlobsConf)

    def names(self) -> list[str]:
        return [f.name for f in fields(self)]


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
    datasets: DatasetsConf = field(default_factory=DatasetsConf)
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
    def ds(self) -> MnistConf | BlobsConf:
        """The settings of the dataset this job uses."""
        return getattr(self.datasets, self.dataset)

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


def register() -> None:
    """The schema in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=Config)


# --------------------------------------------------------------------------- load and check


def load(cfg: DictConfig) -> Config:
    """The composed config, typed and checked: one UserError line for the first bad value."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        # As plain data: a node Hydra composed is typed already, and keeps a key added with `+`.
        node = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg
        plain = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
        typed = OmegaConf.merge(OmegaConf.structured(Config), plain)
        config: Config = OmegaConf.to_object(typed)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise UserError(config_error(exc)) from None
    check(config)
    return config


def config_error(exc: BaseException) -> str:
    """One line for a value the schema refuses: the key, the bad value, what is valid."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    key = getattr(exc, "full_key", None) or ""
    message = first_line(exc)
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
        return unknown_key(str(key))
    return f"{key}: {message}" if key else message


def composition_error(exc: BaseException, overrides: list[str] | tuple[str, ...]) -> str:
    """One line for a composition Hydra refused: the key, the bad value and what is valid."""
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        OmegaConfBaseException,
        ValidationError,
    )

    cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else exc
    key = str(getattr(cause, "full_key", "") or "")
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and key:
        line = next((o for o in overrides if o.lstrip("+~").split("=")[0] == key), key)
        return unknown_key(key, line)
    if isinstance(cause, ValidationError) and key:
        return config_error(cause)
    message = first_line(exc)
    if cause is not exc:
        message += " " + first_line(cause)
    return f"cannot apply the overrides {' '.join(overrides)}: {message}"


def unknown_key(key: str, override: str | None = None) -> str:
    """`unknown key 'trainer.epochz'; valid under trainer: name, epochs, ...`"""
    parent_key, _, _ = key.rpartition(".")
    node = OmegaConf.structured(Config)
    parent = OmegaConf.select(node, parent_key) if parent_key else node
    where = f"under {parent_key}" if parent_key else "at the top level"
    valid = f"; valid {where}: {', '.join(map(str, parent))}" if isinstance(parent, DictConfig) and len(parent) else ""
    return f"unknown key {key!r}" + (f" in override {override!r}" if override else "") + valid


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value: Any, key: str) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise UserError(f"{key} must be a positive whole number, got {value!r}")


def _non_negative_int(value: Any, key: str) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        raise UserError(f"{key} must be a whole number >= 0, got {value!r}")


def _positive(value: Any, key: str) -> None:
    if not (_number(value) and value > 0):
        raise UserError(f"{key} must be a positive number, got {value!r}")


def _fraction(value: Any, key: str, *, low_inclusive: bool = False) -> float:
    """A number in (0, 1), or [0, 1) with low_inclusive."""
    inside = _number(value) and ((0 <= value < 1) if low_inclusive else (0 < value < 1))
    if not inside:
        raise UserError(f"{key} must be a number in {'[0, 1)' if low_inclusive else '(0, 1)'}, got {value!r}")
    return float(value)


def check(cfg: Config) -> None:
    """What types cannot say, key by key (the first bad one is the error)."""
    names = cfg.datasets.names()
    if cfg.dataset not in names:
        raise UserError(f"unknown dataset {cfg.dataset!r}; valid: {', '.join(sorted(names))}")
    for name in names:
        ds = getattr(cfg.datasets, name)
        _positive_int(ds.num_classes, f"datasets.{name}.num_classes")
        _positive_int(ds.batch_size, f"datasets.{name}.batch_size")
        if ds.binary.positive_class not in range(ds.num_classes):
            raise UserError(f"datasets.{name}.binary.positive_class must be in 0..{ds.num_classes - 1}, "
                            f"got {ds.binary.positive_class!r}")
    mnist, blobs = cfg.datasets.mnist, cfg.datasets.blobs
    _positive(mnist.fetch.timeout_s, "datasets.mnist.fetch.timeout_s")
    _positive(mnist.preprocess.scale, "datasets.mnist.preprocess.scale")
    _positive_int(blobs.fetch.n_samples, "datasets.blobs.fetch.n_samples")
    _positive(blobs.fetch.cluster_std, "datasets.blobs.fetch.cluster_std")
    _fraction(blobs.preprocess.test_size, "datasets.blobs.preprocess.test_size")
    check_head(str(cfg.task), cfg.model.head)
    if not cfg.model.layers or not all(u > 0 for u in cfg.model.layers):
        raise UserError(f"model.layers must be a list of positive unit counts, got {cfg.model.layers!r}")
    _non_negative_int(cfg.seed, "seed")
    t = cfg.trainer
    _positive_int(t.epochs, "trainer.epochs")
    if t.batch_size is not None:
        _positive_int(t.batch_size, "trainer.batch_size")
    for key in ("steps_per_execution", "shuffle_buffer", "log_every_n_steps"):
        _positive_int(getattr(t, key), f"trainer.{key}")
    _fraction(t.validation_split, "trainer.validation_split", low_inclusive=True)
    for key in ("jit_compile", "checkpoint"):
        if not (isinstance(getattr(t, key), bool) or getattr(t, key) == "auto"):
            raise UserError(f"trainer.{key} must be one of auto, true, false; got {getattr(t, key)!r}")
    if t.max_loss is not None:
        _positive(t.max_loss, "trainer.max_loss")
    _non_negative_int(t.verbose, "trainer.verbose")
    _positive(cfg.optimizer.lr, "optimizer.lr")
    _non_negative_int(cfg.tracking.retries, "tracking.retries")
    _positive(cfg.tracking.backoff_s, "tracking.backoff_s")
    _positive_int(cfg.tracking.timeout_s, "tracking.timeout_s")
    _positive_int(cfg.report.digits, "report.digits")
    _positive_int(cfg.evaluate.n_examples, "evaluate.n_examples")
    _positive_int(cfg.evaluate.batch_size, "evaluate.batch_size")


# --------------------------------------------------------------------------- params.yaml and MLflow params


def compose(root: Path, overrides: list[str] | None = None) -> Config:
    """conf/config.yaml composed with `overrides` and loaded, a mistake as one UserError line (for
    tests and tools)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose_params(root, overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(composition_error(exc, overrides or [])) from None
    return load(cfg)


def compose_params(root: Path, overrides: list[str] | None = None) -> DictConfig:
    """conf/config.yaml composed as DVC's Hydra integration composes it (resolved, no hydra node)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(str((root / CONF_DIR).resolve()), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=overrides or [])
    OmegaConf.resolve(cfg)
    return cfg


def write_params(root: Path) -> Path:
    """Regenerate params.yaml from conf/ with DVC's own composer, so `dvc exp run` writes the same shape."""
    from dvc.utils.hydra import compose_and_dump

    register()
    out = root / PARAMS_FILE
    compose_and_dump(out, str((root / CONF_DIR).resolve()), None, "config", "", [])
    return out


def flatten(node: Any, prefix: str = "") -> dict[str, str]:
    """Dotted keys to strings, for MLflow params; lists become JSON."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    elif not isinstance(node, dict):
        node = OmegaConf.to_container(OmegaConf.structured(node), resolve=True, enum_to_str=True)
    flat: dict[str, str] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list):
            flat[name] = json.dumps(value)
        else:
            flat[name] = "null" if value is None else str(value)
    return flat


def run_params(cfg: Config) -> dict[str, str]:
    """The resolved config of one job as MLflow params, the chosen dataset's settings under `dataset.`
    (the other datasets left out)."""
    node = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)
    node["dataset"] = node.pop("datasets")[cfg.dataset]
    return flatten(node)


# What a run's config hash leaves out: where files go and runs are recorded, the other stages'
# settings, and what only shows or saves progress; none of it changes what a job trains.
NOT_HASHED = ("paths.", "tracking.", "layout", "pipeline.", "report.", "sweep.", "trainer.verbose", "trainer.checkpoint")


def config_hash(cfg: Config) -> str:
    """A hash of the resolved config of one job but NOT_HASHED (Hydra's own settings are not in it):
    two jobs with the same hash train the same thing. Tagged on every run
    (`logitlab.config_hash`); a checkpoint resumes only the config it was saved for."""
    import hashlib

    params = {k: v for k, v in run_params(cfg).items() if not k.startswith(NOT_HASHED)}
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def params_drift(root: Path) -> list[str]:
    """Dotted keys where params.yaml and the composition of conf/ differ (empty: they agree)."""
    path = root / PARAMS_FILE
    if not path.is_file():
        return ["<missing params.yaml>"]
    composed = flatten(compose_params(root))
    written = flatten(OmegaConf.load(path))
    return sorted(k for k in composed.keys() | written.keys() if composed.get(k) != written.get(k))
