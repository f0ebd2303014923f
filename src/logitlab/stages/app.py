"""What every Hydra app of pipelines/ shares: the command line checked before Hydra runs, the
composed config loaded through the schema, the stage run, and any failure turned into one line.

A pipeline app is its `@hydra.main` and one call:

    @hydra.main(version_base="1.3", config_path="../conf", config_name="config")
    def main(cfg): return app.run(train, cfg)

    if __name__ == "__main__":
        app.launch(main, __file__)
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from logitlab.errors import RunFailed, UserError, first_line, redact_logs, redact_text
from logitlab.schema import Config, load
from logitlab.stages.job import Job, config_root, current_job, record_failure

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter

log = logging.getLogger(__name__)

Stage = Callable[[Config, Path, Job], Any]


def launch(main: Callable[[], Any], script: str) -> None:
    """Check the command line (one line and exit 2 on a mistake, before Hydra writes anything), then
    run. What the run made is then frozen (gc.freeze()): the interpreter's collections as it shuts
    down would look at every object again only to find what the exit frees anyway. They took 0.65 s
    of a sweep's parent process (its jobs' configs and Hydra's returns: many small cycles) and 0.1 s of
    a train stage. Nothing the run writes waits on them: its files are closed, its MLflow run ended
    and its logging flushed by the exit's handlers, which run before."""
    import gc

    from logitlab.stages.cli import check_command_line

    check_command_line(script, "../conf", "config")
    try:
        main()
    finally:
        gc.freeze()


def run(stage: Stage, cfg: DictConfig) -> Any:
    """The body of a Hydra app: run `stage` on the loaded config, and turn a failure into one line.

    A user mistake exits 2, a job that could not complete (diverged, tracking store down) exits 1; in
    a multirun the failed job is recorded and the other jobs go on (sweep.MlflowSweep reports them
    and exits 1 at the end), whatever the failure. Ctrl-C and SIGTERM always end the process."""
    from hydra.core.hydra_config import HydraConfig

    redact_logs()
    job = current_job()
    name = stage.__name__
    try:
        config = load(cfg)
        root = config_root(HydraConfig.get())
        return stage(config, root, job)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (errors.Interrupted): the run is KILLED
        signal_name = getattr(exc, "signal_name", "SIGINT")
        print(f"logitlab {name}: interrupted by {signal_name}", file=sys.stderr)
        sys.exit(128 + getattr(signal, signal_name))
    except (UserError, RunFailed) as exc:
        _fail(name, job, exc, exc.exit_code)
    except Exception as exc:
        if _is_store_error(exc):
            _fail(name, job, exc, 1)
        elif job.multirun:  # a bug, in one job of a sweep: its traceback in the job's log, the sweep goes on
            log.exception("job failed")
            _fail(name, job, exc, 1)
        else:
            raise
    return None  # a failed job has no objective: optuna records a failed trial and goes on


def _fail(stage: str, job: Job, exc: BaseException, exit_code: int) -> None:
    """One line for the user; in a sweep, the job is recorded as failed and the sweep goes on."""
    message = redact_text(first_line(exc))
    print(f"logitlab {stage}: error: {message}", file=sys.stderr)
    if not job.multirun:
        sys.exit(exit_code)
    record_failure(job.sweep_dir, job.num, [redact_text(o) for o in job.overrides], message)


def _is_store_error(exc: BaseException) -> bool:
    """An MLflow or SQL error that escaped store_call's wrapping: still a store failure, not a bug."""
    return type(exc).__module__.split(".")[0] in ("mlflow", "sqlalchemy", "requests", "urllib3")
