"""Hydra multiruns as MLflow parent runs, and sweeps that survive their jobs' failures.

`MlflowSweep` is a Hydra callback (`hydra.callbacks` in conf/config.yaml):
- at the start of a training sweep it creates one parent run, tagged `logitlab.kind=sweep`, the sweep
  id and the sweep's override string, and writes its id to `<sweep dir>/.logitlab-sweep.json`, where
  every job finds it, whatever process or machine the launcher runs it in (basic, joblib, submitit);
  each job's run is then a child run (`mlflow.parentRunId`), tagged with the same sweep id;
- a job that fails records one line under `<sweep dir>/.logitlab-failed/` and returns, so the other
  jobs go on (see `stages.entry`);
- at the end it closes the parent run (FINISHED, or FAILED if any job failed) with job counts, prints
  one line per failed job and exits 1 if there was any;
- with sweep.resume=true, a job whose config hash already has a FINISHED run in the experiment is
  skipped (recorded under `<sweep dir>/.logitlab-skipped/`, counted as `jobs_skipped`), and an optuna
  study kept in a storage resumes with the trials still missing.
A sweep launched twice, even into the same directory, makes two parent runs.

A parallel sweep's worker processes are set up before, by `stages.workers.Workers`.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from logitlab.errors import RunFailed, StoreDamaged, UserError
from logitlab.files import check_sqlite, write_json
from logitlab.stages.forking import exit_before_launch
from logitlab.stages.job import (
    CONFIG_HASH_TAG,
    KIND_TAG,
    PARENT_TAG,
    SWEEP_FILE,
    SWEEP_TAG,
    TRACKED_APPS,
    config_root,
    failures,
    read_sweep,
    skips,
)

log = logging.getLogger(__name__)

def finished_run(experiment_id: str, config_hash: str) -> Any:
    """The latest FINISHED training run of this config in the experiment, or None."""
    import mlflow

    from logitlab.tracking.store import store_call

    found = store_call("look for a finished run of this config", mlflow.MlflowClient().search_runs, [experiment_id],
                       filter_string=f"tags.`{CONFIG_HASH_TAG}` = '{config_hash}' and attributes.status = 'FINISHED'",
                       order_by=["attributes.start_time DESC"], max_results=1)
    return found[0] if found else None


def _optuna_storage(config: DictConfig) -> str | None:
    sweeper = config.hydra.sweeper
    if "Optuna" not in str(sweeper.get("_target_", "")) or not sweeper.get("storage"):
        return None
    return str(sweeper.storage)


# What remakes a damaged optuna storage: nothing but the study's trials depends on it.
REMAKE_STUDY = "move it aside and launch the sweep again: its optuna study starts afresh"


def prepare_optuna_storage(url: str) -> None:
    """Create optuna's tables in `url` and stamp their schema version, committed. optuna 2.10 (the
    newest hydra-optuna-sweeper accepts) stamps it on a connection it never commits, which SQLAlchemy
    2 rolls back: every later open of the storage then fails its schema check (`assert version is not
    None`). Done before the sweeper opens the storage; a storage already stamped is left alone."""
    import alembic.migration
    import optuna
    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _VersionManager
    from sqlalchemy.orm import Session

    engine = sqlalchemy.create_engine(url)
    try:
        models.BaseModel.metadata.create_all(engine)
        with Session(engine) as session:
            if models.VersionInfoModel.find(session) is None:
                session.add(models.VersionInfoModel(schema_version=models.SCHEMA_VERSION,
                                                    library_version=optuna.__version__))
                session.commit()
        versions = _VersionManager.__new__(_VersionManager)  # only for its alembic script
        versions.url = url
        script = versions._create_alembic_script()
        with engine.begin() as connection:  # committed on leaving
            context = alembic.migration.MigrationContext.configure(connection)
            if context.get_current_revision() is None:
                context.stamp(script, script.get_current_head())
    finally:
        engine.dispose()


def _resume_optuna(config: DictConfig) -> None:
    """sweep.resume with an optuna sweeper that keeps its study in a storage: run only the trials still
    missing (the sweeper would run n_trials more; its study, loaded from the storage, has the rest),
    with the sampler's seed moved on, so the new trials are new points."""
    from omegaconf import read_write

    sweeper, storage = config.hydra.sweeper, _optuna_storage(config)
    if storage is None:
        return
    import optuna

    try:
        study = optuna.load_study(study_name=sweeper.study_name, storage=storage)
    except KeyError:  # no such study yet: a first launch
        return
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    with read_write(config.hydra.sweeper):
        sweeper.n_trials = max(0, int(sweeper.n_trials) - done)
        if sweeper.get("sampler") and sweeper.sampler.get("seed") is not None:
            # A sampler seeded as before would propose the first trials' values again.
            sweeper.sampler.seed = int(sweeper.sampler.seed) + len(study.trials)
    log.info("optuna study %s resumed from %s: %d trial(s) complete, %d to go", sweeper.study_name, sweeper.storage,
             done, sweeper.n_trials)


class MlflowSweep(Callback):
    """One MLflow parent run per training sweep; a failed job is reported, never a stopped sweep."""

    def __init__(self, apps: list[str] | tuple[str, ...] = TRACKED_APPS) -> None:
        self.apps = tuple(apps)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._start(config)
        except (UserError, RunFailed) as exc:  # Hydra would only warn, and launch every job into the error
            exit_before_launch(f"logitlab sweep: error: {exc}", exc.exit_code)

    def _start(self, config: DictConfig) -> None:
        from logitlab.errors import redact_logs, redact_text
        from logitlab.schema import load
        from logitlab.tracking.reaper import process_tags, reap_stale
        from logitlab.tracking.store import runs_link, setup, store_call

        redact_logs()
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        sweep_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        info: dict[str, Any] = {"sweep_id": sweep_id, "app": config.hydra.job.name, "parent_run_id": None}
        storage = _optuna_storage(config)
        if storage and storage.startswith("sqlite:"):  # before the sweep's run: a damaged storage fails first
            from logitlab.tracking.store import sqlite_path

            db = sqlite_path(storage)
            if db is not None:
                check_sqlite(db, REMAKE_STUDY)
            prepare_optuna_storage(storage)
        if config.hydra.job.name in self.apps:
            import mlflow

            root = config_root(config.hydra)
            experiment_id = setup(load(config).tracking, root)
            reap_stale(experiment_id, "sweep start")
            overrides = redact_text(" ".join(config.hydra.overrides.task))
            tags = {KIND_TAG: "sweep", SWEEP_TAG: sweep_id, "hydra.overrides": overrides,
                    "hydra.sweep.dir": str(sweep_dir), "hydra.sweeper": str(config.hydra.sweeper._target_),
                    "hydra.launcher": str(config.hydra.launcher._target_), **process_tags()}
            client = mlflow.MlflowClient()
            parent = store_call("start the sweep's run", client.create_run, experiment_id,
                                         run_name=f"sweep-{sweep_id}", tags=tags)
            info["parent_run_id"] = parent.info.run_id
            log.info("sweep %s: parent run %s (%s)", sweep_id, parent.info.run_id, runs_link(experiment_id))
        write_json(sweep_dir / SWEEP_FILE, info)
        if load(config).sweep.resume:
            _resume_optuna(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        info = read_sweep(sweep_dir)
        if info is None:
            return
        failed, skipped = failures(sweep_dir, info["sweep_id"]), skips(sweep_dir, info["sweep_id"])
        exit_code = 1 if failed else 0
        if skipped:
            print(f"logitlab sweep {info['sweep_id']}: {len(skipped)} job(s) skipped, finished before "
                  "(sweep.resume=true)", file=sys.stderr)
        if info.get("parent_run_id"):
            try:
                self._close_parent(config, info["parent_run_id"], len(failed), len(skipped))
            except (RunFailed, StoreDamaged) as exc:  # the store went away: the parent stays RUNNING until reaped
                print(f"logitlab sweep {info['sweep_id']}: error: {exc}", file=sys.stderr)
                exit_code = exc.exit_code
        for f in failed:
            print(f"logitlab sweep {info['sweep_id']}: job {f['num']} ({' '.join(f['overrides'])}) failed: "
                  f"{f['error']}", file=sys.stderr)
        if failed:
            print(f"logitlab sweep {info['sweep_id']}: {len(failed)} job(s) failed; the others ran to the end",
                  file=sys.stderr)
        if exit_code:
            sys.exit(exit_code)

    @staticmethod
    def _close_parent(config: DictConfig, parent_run_id: str, n_failed: int, n_skipped: int) -> None:
        import mlflow

        from logitlab.schema import load
        from logitlab.tracking.store import setup, store_call

        setup(load(config).tracking, config_root(config.hydra))
        client = mlflow.MlflowClient()
        experiment_id = store_call("read the sweep's run", client.get_run, parent_run_id).info.experiment_id
        children = store_call("read the sweep's runs", client.search_runs, [experiment_id],
                              filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=10000)
        statuses = [r.info.status for r in children]
        counts = {s: statuses.count(s) for s in ("FINISHED", "FAILED", "KILLED", "RUNNING")}
        metrics = {f"jobs_{s.lower()}": float(n) for s, n in counts.items()}
        metrics["jobs_failed_before_run"] = float(max(0, n_failed - counts["FAILED"] - counts["KILLED"]))
        metrics["jobs_skipped"] = float(n_skipped)
        store_call("log the sweep's counts", client.log_batch, parent_run_id,
                            metrics=[_metric(k, v) for k, v in metrics.items()])
        ok = n_failed == 0 and counts["FINISHED"] == len(statuses)
        store_call("end the sweep's run", client.set_terminated, parent_run_id, "FINISHED" if ok else "FAILED")


def _metric(key: str, value: float) -> Any:
    from mlflow.entities import Metric

    return Metric(key, value, int(time.time() * 1000), 0)
