"""The train stage: one variant, one process, one MLflow run.

It trains `cfg.model.head` on `cfg.dataset` for `cfg.task`, evaluates the model on the test set
(evaluate.split) in the same process, writes the stage's files, and sends the same to one MLflow run, opened once and
closed once (so the run's duration is the variant's real time). Its files, by `outputs`:

  pipeline (the DVC stages)        job (runs and sweeps: the Hydra job's folder)
  paths.models/<variant>/          model.keras, outputs.npz (every test output, probabilities, label),
                                   notebook.txt (the reference notebook's printout, from this run)
  paths.metrics/<variant>.json     metrics.json: test metrics and numerics (dvc metrics show)
  paths.history/<variant>.tsv      history.tsv: one row per epoch (dvc plots show, x: epoch)
  paths.predictions/<variant>.json predictions.json: the variant, its params, its first test outputs

Nothing here reads MLflow to make these files: a DVC stage reproduces without any tracking store.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import mlflow

from logitlab.data.dataset import Drawing, dataset_of
from logitlab.data.preprocess import (
    load_processed,
    remake_processed,
    splits,
    task_labels,
)
from logitlab.errors import Diverged, StoreDamaged, StoreUnavailable, redact_text
from logitlab.evaluate.metrics import Evaluation, evaluate
from logitlab.evaluate.registry import names
from logitlab.evaluate.printout import write_printout
from logitlab.files import (
    MODEL_FILE,
    OUTPUTS_FILE,
    atomic_path,
    require,
    save_arrays,
    write_json,
    write_text,
)
from logitlab.model.heads import Head, head_of
from logitlab.report.run_figure import FIGURE_FILE, draw_run_figure
from logitlab.schema import (
    Config,
    EvaluateOn,
    Layout,
    TrainerName,
    TrainOn,
    config_hash,
    group_hash,
    run_params,
)
from logitlab.serving.pyfunc import log_model
from logitlab.serving.registry import register
from logitlab.stages.job import CONFIG_HASH_TAG, GROUP_TAG, SWEEP_TAG, Job, read_sweep, record_skip
from logitlab.stages.sweep import finished_run
from logitlab.tracking.lineage import datasets, dvc_experiment_tags, slurm_tags
from logitlab.tracking.runs import RunLog, open_store, tracked_run
from logitlab.tracking.store import runs_link, store_call
from logitlab.train.checkpoint import Checkpoint, EpochCheckpoint, restore
from logitlab.train.checkpoint import enabled as checkpoint_enabled
from logitlab.train.loop import fit_compiled, prepare
from logitlab.train.tape import StepLog, fit_gradient_tape

log = logging.getLogger(__name__)

HISTORY_FILE, METRICS_FILE, PREDICTIONS_FILE = "history.tsv", "metrics.json", "predictions.json"
RESUMED_TAG = "logitlab.resumed_after_epoch"  # a requeued job that took its run up again


@dataclass(frozen=True)
class Files:
    """Where one variant's files go."""

    model_dir: Path
    metrics: Path
    history: Path
    predictions: Path

    @classmethod
    def of(cls, cfg: Config, root: Path, job_dir: Path) -> Files:
        if cfg.layout == Layout.pipeline:
            name = cfg.variant
            return cls(cfg.path(root, "models") / name, cfg.path(root, "metrics") / f"{name}.json",
                       cfg.path(root, "history") / f"{name}.tsv", cfg.path(root, "predictions") / f"{name}.json")
        return cls(job_dir, job_dir / METRICS_FILE, job_dir / HISTORY_FILE, job_dir / PREDICTIONS_FILE)


def history_tsv(history: list[dict[str, float]]) -> str:
    """One row per epoch (counted from 1), for `dvc plots` with x: epoch."""
    columns = list(history[0]) if history else []
    rows = ["\t".join(["epoch", *columns])]
    rows += ["\t".join([str(epoch), *(repr(float(logs[c])) for c in columns)]) for epoch, logs in enumerate(history, 1)]
    return "\n".join(rows) + "\n"


def identity(cfg: Config) -> dict[str, str]:
    """The tags that say which variant a run is."""
    return {"dataset": cfg.dataset, "task": str(cfg.task), "head": cfg.model.head, "trainer": str(cfg.trainer.name),
            "precision": str(cfg.precision), "logitlab.variant": cfg.variant}


@dataclass
class Plan:
    """What `decide` settled for one variant before anything trains: the plug-ins, the data, how the
    run is named and tagged, and the checkpoint it resumes from, if any."""

    cfg: Config
    root: Path
    job: Job
    head: Head
    drawing: Drawing
    processed: Path                 # the processed file trained on (its DVC hash names the MLflow datasets)
    data: dict[str, Any]            # x_train, y_train, x_eval, y_eval
    key: str                        # the config hash
    run_name: str
    tags: dict[str, str]
    parent: str | None              # the sweep's parent run
    params: dict[str, str]
    sets: tuple[Any, Any]           # the training and evaluation sets as MLflow datasets
    checkpoint: Checkpoint | None
    saved: Any                      # the checkpoint's (state, weights), or None: from epoch 1

    @property
    def done(self) -> list[dict[str, float]]:
        """The epochs a resumed run has already trained."""
        return self.saved[0].history if self.saved else []


def train(cfg: Config, root: Path, job: Job) -> float:
    """Train, evaluate and record one variant: `decide`, then `fit` and `record` inside one MLflow run.
    Returns the last epoch's validation loss (training loss without validation): the objective a
    sweeper such as optuna minimizes. A diverged loss ends the run FAILED and writes no file."""
    plan = decide(cfg, root, job)
    if not isinstance(plan, Plan):  # skipped by sweep.resume: the finished run's objective
        return plan
    model, x, y = prepare(cfg, plan.head, plan.data)
    if plan.saved:
        restore(model, plan.saved[1])
    with _checkpoint_ends_with_divergence(plan.checkpoint), \
            tracked_run(cfg.tracking, root, found_by="train", run_name=plan.run_name, tags=plan.tags,
                        parent_run_id=plan.parent, resume_run_id=plan.saved[0].run_id if plan.saved else None) as run:
        run_log = RunLog(run.info.run_id)
        history, steps = fit(plan, model, x, y, run, run_log)
        result = record(plan, model, history, steps, run, run_log)
    if plan.checkpoint:
        plan.checkpoint.clear()  # the run is complete: a relaunch in this folder starts afresh
    log.info("%s test: %s", plan.run_name, ", ".join(f"{k}={result.metrics[k]:.6g}" for k in names(summary=True)
                                                                           if k in result.metrics))
    log.info("run %s: %s", run.info.run_id, runs_link(run.info.experiment_id))
    last = history[-1]
    return float(last.get("val_loss", last["loss"]))


def decide(cfg: Config, root: Path, job: Job) -> Plan | float:
    """Everything settled before training, each failure before the store is written: the plug-ins
    (their settings checked), the processed file (a damaged one fails before the store is touched),
    the store (one that does not answer fails now), a finished run that sweep.resume skips to (its
    objective is returned instead of a plan), the run's name, tags and params, the checkpoint."""
    head, dataset = head_of(cfg), dataset_of(cfg)
    processed = require(cfg.path(root, "processed"), remake_processed(cfg.dataset))
    data = splits(load_processed(processed, cfg.dataset), cfg.trainer.train_on, cfg.evaluate.split)
    experiment_id = open_store(cfg.tracking, root, "the train stage")
    params = run_params(cfg)  # flattened once for the params, the hash and the group
    key = config_hash(cfg, params=params)
    if cfg.sweep.resume and (finished := finished_run(experiment_id, key)) is not None:
        if job.multirun:
            record_skip(job.sweep_dir, job.num, job.overrides, finished.info.run_id)
        log.info("skipped: run %s finished this config (%s) before (sweep.resume=true)", finished.info.run_id, key)
        metrics = finished.data.metrics
        return float(metrics.get("val_loss", metrics.get("loss", float("nan"))))
    if cfg.trainer.train_on == TrainOn.all and cfg.evaluate.split == EvaluateOn.test:
        log.warning("trainer.train_on=all trains on the test split too: its test metrics are not held out")

    tags = {**identity(cfg), "hydra.job.num": str(job.num), "hydra.overrides": redact_text(" ".join(job.overrides)),
            CONFIG_HASH_TAG: key, GROUP_TAG: group_hash(cfg, params)}
    parent = None
    if job.multirun:
        sweep = read_sweep(job.sweep_dir) or {}
        parent = sweep.get("parent_run_id")
        tags[SWEEP_TAG] = sweep.get("sweep_id", "")
    tags.update(dvc_experiment_tags())  # a `dvc exp run`: the experiment's name and baseline
    tags.update(slurm_tags())  # a SLURM job: its id and restart count
    checkpoint = Checkpoint(job.dir, key) if checkpoint_enabled(cfg.trainer.checkpoint) else None
    saved = checkpoint.load() if checkpoint else None
    if saved and not _run_exists(saved[0].run_id):
        log.warning("checkpoint of run %s, which this store does not have: starting from epoch 1", saved[0].run_id)
        saved = None
    if saved:
        tags[RESUMED_TAG] = str(len(saved[0].history))
    # The training and evaluation sets as MLflow datasets, digested by the processed file's DVC hash.
    trained_on = str(cfg.trainer.train_on)  # train | all
    evaluated_on = trained_on if cfg.evaluate.split == EvaluateOn.train else "test"
    y = task_labels(data["y_train"], cfg.task, cfg.ds.binary.positive_class)
    sets = datasets(cfg.dataset, processed, data["x_train"], y, *eval_set(cfg, data), (trained_on, evaluated_on))
    return Plan(cfg, root, job, head, dataset.drawing(), processed, data, key,
                run_name=f"{cfg.variant}-{job.num}" if job.multirun else cfg.variant, tags=tags, parent=parent,
                params={k: redact_text(v) for k, v in params.items()},  # no password of a URI
                sets=sets, checkpoint=checkpoint, saved=saved)


def fit(plan: Plan, model: Any, x: Any, y: Any, run: Any, run_log: RunLog) -> tuple[list[dict[str, float]], list[StepLog]]:
    """Train `model` inside the open run: params and datasets logged first (a resumed run has them,
    and gets the epochs its checkpoint holds that never reached it), each epoch to the run as it ends.
    Returns every epoch's metrics, and the GradientTape loop's step log."""
    cfg, done = plan.cfg, plan.done
    if plan.saved:
        _log_missing_epochs(run_log, done)
        log.info("resuming %s after epoch %d of %d, run %s", plan.run_name, len(done), cfg.trainer.epochs,
                 run.info.run_id)
    else:
        run_log.log_params(plan.params)
        store_call("log the datasets", mlflow.log_inputs, datasets=list(plan.sets),
                   contexts=["training", "evaluation"], tags_list=[None, None])
        log.info("training %s: %s head, %s %s, %s trainer, %d examples, run %s", plan.run_name, plan.head.name,
                 cfg.dataset, cfg.task, cfg.trainer.name, len(x), run.info.run_id)
    saver = EpochCheckpoint(plan.checkpoint, run.info.run_id, done, cfg.trainer.max_loss) if plan.checkpoint else None
    steps: list[StepLog] = []
    start = time.perf_counter()
    try:
        history = done + trainer_for(cfg, plan.head, steps)(model, x, y, cfg, run_log, initial_epoch=len(done),
                                                            saver=saver)
    except BaseException:
        _flush_after_error(run_log)  # the epochs before the failure still reach the run
        raise
    run_log.log({"train_seconds": time.perf_counter() - start})
    return history, steps


def record(plan: Plan, model: Any, history: list[dict[str, float]], steps: list[StepLog], run: Any,
           run_log: RunLog) -> Evaluation:
    """Evaluate the trained model, write the variant's files (DVC's outputs), and send the same to the
    run: the logged model with its test metrics, the predictions and printouts, and the registry."""
    cfg, head = plan.cfg, plan.head
    x_eval, y_eval = eval_set(cfg, plan.data)
    result = evaluate(model, x_eval, y_eval, str(cfg.task), head, cfg.evaluate.batch_size, cfg.evaluate.n_examples)
    files = Files.of(cfg, plan.root, plan.job.dir)
    predictions = {"variant": cfg.variant, "stage": cfg.stage, **identity(cfg), "tags": result.tags,
                   "params": plan.params, "examples": result.examples}
    write_outputs(files, model, history, result, predictions)
    notebook = write_printout(files.model_dir, result, x_eval, cfg, head, steps, plan.drawing)
    picture = draw_run_figure(files.model_dir / FIGURE_FILE, result.outputs, result.probabilities, result.labels,
                              str(cfg.task), head.from_logits, f"{plan.run_name}: {head.name} head, "
                              f"{len(result.labels)} {cfg.evaluate.split} examples", history)
    last_epoch = len(history) - 1  # its step: the logged model is the run's output there, linked to its metrics
    logged = store_call("log the model", log_model, model, name=cfg.variant, task=str(cfg.task), head=head,
                        n_classes=cfg.ds.num_classes, example=x_eval, tags=identity(cfg), params=plan.params,
                        step=last_epoch,
                        saved=files.model_dir / MODEL_FILE)  # the file write_outputs wrote: copied, not saved again
    run_log.link_model(logged.model_id, last_epoch)
    run_log.log(result.metrics, model_id=logged.model_id, dataset=plan.sets[1])  # the Models tab's test metrics
    run_log.log(process_memory())
    run_log.set_tags(result.tags)
    store_call("log the predictions", mlflow.log_dict, predictions, PREDICTIONS_FILE)
    for path in (files.model_dir / OUTPUTS_FILE, *notebook, picture):
        store_call(f"log {path.name}", mlflow.log_artifact, str(path))
    run_log.flush()  # the metrics and tags written while the files were copied
    if cfg.registers:
        version = register(logged.model_id, run.info.run_id, dataset=cfg.dataset, task=str(cfg.task),
                           layers=cfg.model.layers, activation=str(cfg.model.activation), head=head,
                           trainer=str(cfg.trainer.name), variant=cfg.variant, metrics=result.metrics,
                           stage=cfg.stage if cfg.layout == Layout.pipeline else None)
        store_call("tag the run", mlflow.set_tag, "logitlab.registered", f"{version.name}/{version.version}")
        log.info("registered %s version %s as @%s; @champion is @%s", version.name, version.version,
                 version.alias, version.champion)
    return result


def eval_set(cfg: Config, data: dict[str, Any]) -> tuple[Any, Any]:
    """The examples evaluated on, and their labels for the task."""
    return data["x_eval"], task_labels(data["y_eval"], cfg.task, cfg.ds.binary.positive_class)


def trainer_for(cfg: Config, head: Head, steps: list[StepLog]) -> Any:
    """The trainer of `cfg.trainer.name`: `fit` (Keras fit's contract) or the notebook's GradientTape
    loop, whose step log goes into `steps`. Called as trainer(model, x, y, cfg, metrics, ...)."""
    if cfg.trainer.name == TrainerName.gradient_tape:
        return partial(fit_gradient_tape, head=head, steps=steps)
    return fit_compiled


def process_memory() -> dict[str, float]:
    """This process's resident memory now and at its highest, in MiB: what a job needs (SLURM's
    mem_gb), and, over the jobs of one in-process sweep, whether one job leaves memory to the next.

    The highest is Linux's VmHWM, this program's own: getrusage's ru_maxrss survives exec, so a job
    started by a big process would report its parent's peak."""
    import resource

    import psutil

    rss = psutil.Process().memory_info().rss
    try:
        status = Path("/proc/self/status").read_text()
        peak = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError, IndexError):  # not Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS
        peak = peak if sys.platform == "darwin" else peak * 1024
    return {"rss_mb": rss / 2**20, "peak_rss_mb": max(peak, rss) / 2**20}


def write_outputs(files: Files, model: Any, history: list[dict[str, float]], result: Evaluation,
                  predictions: dict[str, Any]) -> None:
    """The variant's files, each written atomically."""
    files.model_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(files.model_dir / MODEL_FILE) as tmp:
        model.save(tmp)
    save_arrays(files.model_dir / OUTPUTS_FILE, result.arrays())
    write_json(files.metrics, result.metrics)
    write_text(files.history, history_tsv(history))
    write_json(files.predictions, predictions)


@contextlib.contextmanager
def _checkpoint_ends_with_divergence(checkpoint: Checkpoint | None) -> Iterator[None]:
    """A diverged run is over: its checkpoint goes, so running the job again starts afresh (an
    interrupted one keeps it, to resume)."""
    try:
        yield
    except Diverged:
        if checkpoint:
            checkpoint.clear()
        raise


def _run_exists(run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient().get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def _log_missing_epochs(run_log: RunLog, done: list[dict[str, float]]) -> None:
    """The checkpoint's epochs that never reached the run (the job was killed between saving an
    epoch and its metrics reaching the store): each epoch is in the run exactly once."""
    import mlflow

    logged = {m.step for m in store_call("read the run's epochs", mlflow.MlflowClient().get_metric_history,
                                         run_log.run_id, "loss")}
    for epoch, logs in enumerate(done):
        if epoch not in logged:
            run_log.log(logs, step=epoch)


def _flush_after_error(run_log: RunLog) -> None:
    """Flush while another exception is on its way: a store failing now is logged, not raised over it."""
    try:
        run_log.flush()
    except (StoreUnavailable, StoreDamaged, KeyboardInterrupt) as exc:
        log.error("could not log the last metrics: %s", exc)

