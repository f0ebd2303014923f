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

from logitlab.data.preprocess import load_processed, remake_processed, splits, task_labels
from logitlab.errors import Diverged, StoreUnavailable
from logitlab.evaluate.metrics import Evaluation, evaluate
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
from logitlab.schema import Config, EvaluateOn, Layout, TrainerName, TrainOn, config_hash, run_params
from logitlab.serving.pyfunc import log_model
from logitlab.serving.registry import register
from logitlab.sweep import CONFIG_HASH_TAG, SWEEP_TAG, Job, finished_run, read_sweep, record_skip
from logitlab.tracking.lineage import datasets, dvc_experiment_tags, slurm_tags
from logitlab.tracking.redaction import redact_text
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


def train(cfg: Config, root: Path, job: Job) -> float:
    """Train, evaluate and record one variant. Returns the last epoch's validation loss (training loss
    without validation): the objective a sweeper such as optuna minimizes.

    A diverged loss ends the run FAILED and writes no file."""
    processed = require(cfg.path(root, "processed"), remake_processed(cfg.dataset))
    # A damaged file fails before the store is touched; then the examples trained on and evaluated on.
    data = splits(load_processed(processed, cfg.dataset), cfg.trainer.train_on, cfg.evaluate.split)
    experiment_id = open_store(cfg.tracking, root, "the train stage")  # a store that does not answer fails now
    key = config_hash(cfg)
    if cfg.sweep.resume:
        finished = finished_run(experiment_id, key)
        if finished is not None:
            if job.multirun:
                record_skip(job.sweep_dir, job.num, job.overrides, finished.info.run_id)
            log.info("skipped: run %s finished this config (%s) before (sweep.resume=true)", finished.info.run_id, key)
            metrics = finished.data.metrics
            return float(metrics.get("val_loss", metrics.get("loss", float("nan"))))
    model, x, y = prepare(cfg, data)
    if cfg.trainer.train_on == TrainOn.all and cfg.evaluate.split == EvaluateOn.test:
        log.warning("trainer.train_on=all trains on the test split too: its test metrics are not held out")

    tags = {**identity(cfg), "hydra.job.num": str(job.num), "hydra.overrides": redact_text(" ".join(job.overrides)),
            CONFIG_HASH_TAG: key}
    parent = None
    if job.multirun:
        sweep = read_sweep(job.sweep_dir) or {}
        parent = sweep.get("parent_run_id")
        tags[SWEEP_TAG] = sweep.get("sweep_id", "")
    tags.update(dvc_experiment_tags())  # a `dvc exp run`: the experiment's name and baseline
    tags.update(slurm_tags())  # a SLURM job: its id and restart count
    run_name = f"{cfg.variant}-{job.num}" if job.multirun else cfg.variant
    params = {k: redact_text(v) for k, v in run_params(cfg).items()}  # no password of a URI

    x_eval, y_eval = data["x_eval"], task_labels(data["y_eval"], cfg.task, cfg.ds.binary.positive_class)
    trained_on = str(cfg.trainer.train_on)  # train | all
    evaluated_on = trained_on if cfg.evaluate.split == EvaluateOn.train else "test"
    train_set, test_set = datasets(cfg.dataset, processed, x, y, x_eval, y_eval, (trained_on, evaluated_on))
    steps: list[StepLog] = []
    trainer = trainer_for(cfg, steps)
    checkpoint = Checkpoint(job.dir, key) if checkpoint_enabled(cfg.trainer.checkpoint) else None
    saved = checkpoint.load() if checkpoint else None
    if saved and not _run_exists(saved[0].run_id):
        log.warning("checkpoint of run %s, which this store does not have: starting from epoch 1", saved[0].run_id)
        saved = None
    done: list[dict[str, float]] = saved[0].history if saved else []
    if saved:
        restore(model, saved[1])
        tags[RESUMED_TAG] = str(len(done))

    with _checkpoint_ends_with_divergence(checkpoint), \
            tracked_run(cfg.tracking, root, found_by="train", run_name=run_name, tags=tags, parent_run_id=parent,
                        resume_run_id=saved[0].run_id if saved else None) as run:
        run_log = RunLog(run.info.run_id)
        if saved:
            _log_missing_epochs(run_log, done)
            log.info("resuming %s after epoch %d of %d, run %s", run_name, len(done), cfg.trainer.epochs,
                     run.info.run_id)
        else:
            run_log.log_params(params)
            store_call("log the datasets", mlflow.log_inputs, datasets=[train_set, test_set],
                       contexts=["training", "evaluation"], tags_list=[None, None])
            log.info("training %s: %s head, %s %s, %s trainer, %d examples, run %s", run_name, cfg.model.head,
                     cfg.dataset, cfg.task, cfg.trainer.name, len(x), run.info.run_id)
        saver = EpochCheckpoint(checkpoint, run.info.run_id, done, cfg.trainer.max_loss) if checkpoint else None
        start = time.perf_counter()
        try:
            history = done + trainer(model, x, y, cfg, run_log, initial_epoch=len(done), saver=saver)
        except BaseException:
            _flush_after_error(run_log)  # the epochs before the failure still reach the run
            raise
        run_log.log({"train_seconds": time.perf_counter() - start})

        result = evaluate(model, x_eval, y_eval, cfg.task, cfg.model.head, cfg.evaluate.batch_size,
                          cfg.evaluate.n_examples)
        files = Files.of(cfg, root, job.dir)
        predictions = {"variant": cfg.variant, "stage": cfg.stage, **identity(cfg), "tags": result.tags,
                       "params": params, "examples": result.examples}
        write_outputs(files, model, history, result, predictions)
        notebook = write_printout(files.model_dir, result, x_eval, cfg, steps)
        run_log.flush()  # params and epochs in the store: the logged model takes them (the last epoch's metrics)
        logged = store_call("log the model", log_model, model, name=cfg.variant, task=str(cfg.task),
                            head=cfg.model.head, n_classes=cfg.ds.num_classes, example=x_eval,
                            tags=identity(cfg), step=len(history) - 1)
        run_log.log(result.metrics, model_id=logged.model_id, dataset=test_set)  # the Models tab's test metrics
        run_log.log(process_memory())
        run_log.flush()
        store_call("tag the run", mlflow.set_tags, result.tags)
        store_call("log the predictions", mlflow.log_dict, predictions, PREDICTIONS_FILE)
        for path in (files.model_dir / OUTPUTS_FILE, *notebook):
            store_call(f"log {path.name}", mlflow.log_artifact, str(path))
        if cfg.registers:
            version = register(logged.model_id, run.info.run_id, dataset=cfg.dataset, task=str(cfg.task),
                               head=cfg.model.head, trainer=str(cfg.trainer.name), variant=cfg.variant,
                               metrics=result.metrics)
            store_call("tag the run", mlflow.set_tag, "logitlab.registered", f"{version.name}/{version.version}")
            log.info("registered %s version %s as @%s; @champion is @%s", version.name, version.version,
                     version.alias, version.champion)
    if checkpoint:
        checkpoint.clear()  # the run is complete: a relaunch in this folder starts afresh
    log.info("%s test: %s", run_name, ", ".join(f"{k}={result.metrics[k]:.6g}" for k in (
        "test_loss", "test_accuracy", "output_min", "output_max", "prob_min", "prob_max")))
    log.info("run %s: %s", run.info.run_id, runs_link(run.info.experiment_id))
    last = history[-1]
    return float(last.get("val_loss", last["loss"]))


def trainer_for(cfg: Config, steps: list[StepLog]) -> Any:
    """The trainer of `cfg.trainer.name`: `fit` (Keras fit's contract) or the notebook's GradientTape
    loop, whose step log goes into `steps`. Called as trainer(model, x, y, cfg, metrics, ...)."""
    return partial(fit_gradient_tape, steps=steps) if cfg.trainer.name == TrainerName.gradient_tape else fit_compiled


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
    except (StoreUnavailable, KeyboardInterrupt) as exc:
        log.error("could not log the last metrics: %s", exc)

