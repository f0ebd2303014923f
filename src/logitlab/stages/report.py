"""The report stage: the comparison table (summary.csv, summary.md) and the pictures (plots/), made
from the pipeline's own files (`report.runs=pipeline`, what the DVC stage does: no tracking store
needed) or from every run of the MLflow experiment (`report.runs=experiment`, after sweeps); where
the runs vary in learning rate, the study view too (study.csv, study.md, plots/study_*.png:
logitlab.report.study); then sent to MLflow as a run named `report`."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from logitlab.data.dataset import dataset_of
from logitlab.data.preprocess import load_processed, splits
from logitlab.files import atomic_path, read_tsv, write_text
from logitlab.report.plots import (
    Artifact,
    Examples,
    History,
    plot_curves,
    plot_decision_regions,
    plot_digits,
)
from logitlab.report.study import differences, differences_markdown, plot_study
from logitlab.report.table import (
    CAPTION,
    experiment_runs,
    pipeline_runs,
    summarize,
    to_markdown,
)
from logitlab.schema import Config, ReportRuns, under_root
from logitlab.stages.job import Job
from logitlab.stages.cores import cores
from logitlab.tracking.runs import open_store, tracked_run
from logitlab.tracking.store import store_call

log = logging.getLogger(__name__)

KIND_TAG = "logitlab.kind"


def _local(row: pd.Series, name: str) -> Path:
    return Path(row["artifacts"]) / name


def _evaluated(data: dict[str, np.ndarray]) -> Examples:
    """A run's evaluated examples, by its trainer.train_on and evaluate.split (runs from before those
    keys: the training split, evaluated on the test split)."""
    def examples(row: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        train_on, split = row.get("params.trainer.train_on"), row.get("params.evaluate.split")
        chosen = splits(data, train_on if isinstance(train_on, str) else "train", split if isinstance(split, str) else "test")
        return chosen["x_eval"], chosen["y_eval"]

    return examples


def _local_history(row: pd.Series) -> pd.DataFrame:
    return read_tsv(Path(row["history"]), ("epoch", "loss"), remake=f"dvc repro -f {row['stage']}")


def _mlflow_history() -> History:
    """A run's epochs from its metric history (each epoch's `loss`, `val_loss`, ... at step epoch - 1)."""
    import mlflow

    client = mlflow.MlflowClient()

    def history(row: pd.Series) -> pd.DataFrame:
        columns = {}
        for key in ("loss", "val_loss"):
            points = store_call(f"read {key} of run {row['run_id']}", client.get_metric_history, row["run_id"], key)
            if points:
                columns[key] = pd.Series({p.step + 1: p.value for p in sorted(points, key=lambda p: p.timestamp)})
        return pd.DataFrame(columns).sort_index().rename_axis("epoch").reset_index()

    return history


def _from_mlflow(tmp: Path) -> Artifact:
    import mlflow

    client = mlflow.MlflowClient()

    def artifact(row: pd.Series, name: str) -> Path:
        return Path(store_call(f"download {name} of run {row['run_id']}", client.download_artifacts,
                               row["run_id"], name, str(tmp / row["run_id"])))

    return artifact


def draw_examples(cfg: Config, root: Path, name: str, runs: pd.DataFrame, artifact: Artifact, out: Path) -> list[Path]:
    """The pictures of one dataset's runs, by what its plug-in says an example is: an image grid of
    its test examples with each run's prediction, its decision regions in the plane, or none. A
    dataset the config no longer has is left out."""
    if name not in cfg.datasets:
        log.warning("runs of dataset %r, which the config does not have: no pictures of its examples", name)
        return []
    drawing = dataset_of(cfg, name).drawing()
    if drawing.kind == "none":
        return []
    examples = _evaluated(load_processed(cfg.path(root, "processed", name), name))
    if drawing.kind == "image":
        return plot_digits(runs, artifact, out, examples, cfg.report.digits, name, drawing.shape)
    return plot_decision_regions(runs, artifact, out, examples, cfg.datasets[name].binary.positive_class, name)


Drawing = tuple[Callable[..., list[Path]], tuple[Any, ...]]


def drawings(cfg: Config, root: Path, runs: pd.DataFrame, history: History, artifact: Artifact,
             out: Path) -> list[Drawing]:
    """The report's pictures as independent tasks, (function, arguments), each writing its own files
    to `out`: per dataset, its examples (the slowest: an image grid or the decision regions), its loss
    curves and its study view. Each function draws per dataset and task, so a dataset's runs draw
    the same figures alone as among the others."""
    by_dataset = [(str(name), of_dataset) for name, of_dataset in runs.groupby("tags.dataset", sort=True)]
    return ([(draw_examples, (cfg, root, name, of_dataset, artifact, out)) for name, of_dataset in by_dataset]
            + [(plot_curves, (of_dataset, history, out)) for _, of_dataset in by_dataset]
            + [(plot_study, (of_dataset, out)) for _, of_dataset in by_dataset])


@contextlib.contextmanager
def drawing(tasks: list[Drawing], processes: int) -> Iterator[None]:
    """Run the drawing tasks, in up to `processes` forked processes where more than one, while the
    block runs; they are done when it ends. matplotlib draws a figure on one core (the pipeline's
    seven take ~6 s on one). A task's error is raised at the end of the block, as if it had run in
    this process; the files are the same either way (tests/test_report.py). One process: the tasks
    run before the block."""
    import multiprocessing

    processes = min(processes, len(tasks))
    if processes < 2 or "fork" not in multiprocessing.get_all_start_methods():
        for function, args in tasks:
            function(*args)
        yield
        return
    # Forked, a process has what this one imported (spawned, it would import pandas and matplotlib
    # again: ~1.5 s). The tasks read the pipeline's files and write PNGs; none talks to the store.
    with multiprocessing.get_context("fork").Pool(processes, initializer=_drawing_process) as pool:
        results = [pool.apply_async(function, args) for function, args in tasks]
        yield
        for result in results:
            result.get()  # leaving the block terminates the pool, on an error or Ctrl-C too


def draw(tasks: list[Drawing], processes: int) -> None:
    """The drawing tasks, done (see `drawing`)."""
    with drawing(tasks, processes):
        pass


def _drawing_process() -> None:
    """Ctrl-C and SIGTERM are the report's to handle: it terminates its drawing processes (SIGTERM,
    at its default action here: no traceback from a worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def report(cfg: Config, root: Path, job: Job) -> pd.DataFrame:
    """Write summary.csv, summary.md and plots/ to report.out_dir (null: the job's folder), and log
    them as a report run."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    out_dir = under_root(root, cfg.report.out_dir) if cfg.report.out_dir is not None else job.dir
    pipeline = cfg.report.runs == ReportRuns.pipeline
    plots = out_dir / "plots"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        drawn = tmp / "plots"  # drawn aside, so that a failure leaves the last report as it was
        drawn.mkdir()
        if pipeline:
            # The pipeline's runs are files: read first (no store needed to fail), then drawn side by
            # side while this process opens the store, importing MLflow (~1 s) meanwhile.
            runs = pipeline_runs(cfg, root)
            table = summarize(runs)
            with drawing(drawings(cfg, root, runs, _local_history, _local, drawn), cores()):
                open_store(cfg.tracking, root, "the report stage", create=True)
        else:
            # Runs read from the store: a store or experiment that is not there yet is not made, only
            # to fail with "no finished training runs" (the report's own run creates them once there
            # is something to report). They are read as they are drawn, through this process's MLflow
            # client: one at a time.
            experiment_id = open_store(cfg.tracking, root, "the report stage", create=False)
            runs = experiment_runs(cfg.tracking.experiment, experiment_id)
            table = summarize(runs)
            draw(drawings(cfg, root, runs, _mlflow_history(), _from_mlflow(tmp / "artifacts"), drawn), 1)
        plots.mkdir(parents=True, exist_ok=True)
        for stale in plots.glob("*.png"):
            stale.unlink()
        written = [Path(shutil.move(str(png), plots / png.name)) for png in sorted(drawn.glob("*.png"))]

    with atomic_path(out_dir / "summary.csv") as tmp_csv:
        table.to_csv(tmp_csv, index=False)
    write_text(out_dir / "summary.md", f"{CAPTION}\n\n{to_markdown(table)}\n")
    study = differences(runs)
    tables = [out_dir / "summary.csv", out_dir / "summary.md"]
    for stale in ("study.csv", "study.md"):
        (out_dir / stale).unlink(missing_ok=True)
    if len(study):
        with atomic_path(out_dir / "study.csv") as tmp_csv:
            study.to_csv(tmp_csv, index=False)
        tables += [out_dir / "study.csv", write_text(out_dir / "study.md", differences_markdown(study) + "\n")]
    import mlflow

    with tracked_run(cfg.tracking, root, found_by="report", run_name="report",
                     tags={KIND_TAG: "report", "report.runs": str(cfg.report.runs)}):
        store_call("log the report", mlflow.log_metric, "report_variants", len(table))
        for path in tables:
            store_call("log the report", mlflow.log_artifact, str(path))
        store_call("log the report", mlflow.log_artifacts, str(plots), artifact_path="plots")
    log.info("report of %d runs, %d variants, %d plots -> %s", len(runs), len(table), len(written), out_dir)
    return table
