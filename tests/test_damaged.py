"""A damaged file gives one line wherever a command reads it: the SQLite tracking store (the train
app, the report app, `python -m logitlab serve`), an optuna study's storage (a sweep), and a job's
checkpoint, which a job survives. Each test damages the real file and runs the real command.
(Damaged processed data: tests/test_pipeline.py; a damaged logged model: tests/test_serving.py.)"""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from helpers import PYTHON, app, runs_of, subprocess_env, tiny_blobs

STORE_REMAKE = "remake it: move it aside, then dvc repro -f records the pipeline's runs in a new store"
STUDY_REMAKE = "remake it: move it aside and launch the sweep again: its optuna study starts afresh"


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    return tiny_blobs(tmp_path_factory.mktemp("blobs"))


@pytest.fixture(scope="module")
def real_store(tmp_path_factory):
    """A store as MLflow makes it: every table, an experiment."""
    import mlflow

    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").create_experiment("logitlab")
    return db


def damage(path, how):
    body = path.read_bytes()
    if how == "truncated":
        path.write_bytes(body[: len(body) // 2])
    elif how == "garbage":  # no database at all
        path.write_bytes(np.random.default_rng(0).bytes(len(body)))
    else:  # "a page": its last page overwritten, the rest as it was
        path.write_bytes(body[:-4096] + b"\xff" * 4096)


def one_line(proc, stage, code=2):
    """The error line, once its command has failed with `code`, that line last, alone, no traceback."""
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"logitlab {stage}: error: ")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr[-3000:]
    return errors[0].removeprefix(f"logitlab {stage}: error: ")


def test_store_calls_stop_at_once_on_a_damaged_store_and_wait_out_a_locked_one(real_store, tmp_path, caplog):
    import sqlite3

    import mlflow

    from logitlab.errors import StoreDamaged
    from logitlab.files import sqlite_damage
    from logitlab.tracking.store import store_call

    for how in ("truncated", "garbage"):
        db = tmp_path / f"{how}.db"
        shutil.copy(real_store, db)
        damage(db, how)
        mlflow.set_tracking_uri(f"sqlite:///{db}")
        try:
            with pytest.raises(StoreDamaged) as caught:
                store_call("open experiment", mlflow.get_experiment_by_name, "logitlab")
        finally:
            mlflow.set_tracking_uri(None)
        reason = "database disk image is malformed" if how == "truncated" else "file is not a database"
        assert str(caught.value) == f"tracking store {db} is damaged ({reason}); {STORE_REMAKE}"
        assert caught.value.exit_code == 2
    assert "busy" not in caplog.text, "never retried"
    locked = sqlite3.connect(real_store, timeout=0)
    locked.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(sqlite3.OperationalError) as busy:
            sqlite3.connect(real_store, timeout=0).execute("SELECT * FROM experiments")
    finally:
        locked.rollback()
        locked.close()
    assert sqlite_damage(busy.value) is None, "a locked store is busy, not damaged"


@pytest.mark.slow  # a real app or server in a subprocess
@pytest.mark.parametrize("command, how", [("train", "truncated"), ("report", "garbage"), ("serve", "truncated"),
                                          ("serve", "garbage")])
def test_a_damaged_tracking_store_is_one_line_naming_it(tmp_path, blobs, real_store, command, how):
    db = tmp_path / "mlflow.db"
    shutil.copy(real_store, db)
    damage(db, how)
    uri = f"sqlite:///{db}"
    if command == "serve":
        cmd = [PYTHON, "-m", "logitlab", "serve", "models:/logitlab-blobs-25-15-relu@champion", "--tracking-uri", uri]
    else:
        extra = ["trainer.epochs=1"] if command == "train" else ["report.runs=experiment",
                                                                 f"report.out_dir={tmp_path / 'report'}"]
        cmd = app(command, *blobs, *extra, f"tracking.uri='{uri}'", f"hydra.run.dir={tmp_path / 'job'}")
    before = db.read_bytes()
    proc = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    reason = "database disk image is malformed" if how == "truncated" else "file is not a database"
    assert one_line(proc, command) == f"tracking store {db} is damaged ({reason}); {STORE_REMAKE}"
    assert db.read_bytes() == before, "the damaged store is left as it was, for whoever wants to rescue runs"
    assert not (tmp_path / "job" / "model.keras").exists() and not (tmp_path / "report").exists()


def optuna_study(db):
    """A real study of a few trials in `db`, as the lr_search sweeper keeps it."""
    import optuna

    from logitlab.stages.sweep import prepare_optuna_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    prepare_optuna_storage(f"sqlite:///{db}")
    study = optuna.create_study(study_name="logitlab-lr", storage=f"sqlite:///{db}", load_if_exists=True)
    study.optimize(lambda trial: trial.suggest_float("lr", 1e-4, 1e-1, log=True), n_trials=20)


@pytest.mark.slow  # a real app or server in a subprocess
@pytest.mark.parametrize("how", ["garbage", "a page"])
def test_a_damaged_optuna_storage_stops_the_sweep_in_one_line_before_its_run_starts(tmp_path, blobs, how):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    storage = sweep_dir / "optuna.db"
    optuna_study(storage)
    damage(storage, how)
    proc = subprocess.run(app("train", "-m", "hydra/sweeper=lr_search", "hydra.sweeper.n_trials=2", *blobs,
                              "trainer.epochs=1", f"tracking.uri='sqlite:///{tmp_path / 'mlflow.db'}'",
                              f"hydra.sweep.dir={sweep_dir}"),
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    line = one_line(proc, "sweep")
    assert line.startswith(f"{storage} is damaged (") and line.endswith(f"); {STUDY_REMAKE}"), line
    reason = line.removeprefix(f"{storage} is damaged (").removesuffix(f"); {STUDY_REMAKE}")
    expected = "file is not a database" if how == "garbage" else r"Page \d+: btreeInitPage\(\) returns error code 11"
    assert re.fullmatch(expected, reason), reason
    assert not (tmp_path / "mlflow.db").exists(), "no sweep run was started, no job ran"


@pytest.mark.slow  # a real app or server in a subprocess
def test_a_damaged_checkpoint_is_one_warning_and_the_job_trains_from_epoch_1(tmp_path, blobs):
    """A requeued job whose checkpoint is damaged still gets somewhere: the checkpoint only saves time,
    so the job says so in one line and trains afresh, in a run of its own, rather than fail every requeue."""
    job = tmp_path / "job"
    state = job / ".logitlab-checkpoint" / "state.npz"
    state.parent.mkdir(parents=True)
    np.savez(state, weight_0=np.zeros((2, 8), np.float32),
             state=np.array(json.dumps({"key": "k", "run_id": "0" * 32, "history": [{"loss": 1.0}]})))
    damage(state, "truncated")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run(app("train", *blobs, "trainer.epochs=2", "trainer.checkpoint=true", "trainer.verbose=0",
                              f"tracking.uri='{store}'", f"hydra.run.dir={job}"),
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output
    [line] = [line for line in output.splitlines() if str(state) in line]
    assert line.endswith(f"checkpoint {state} is damaged (File is not a zip file): starting from epoch 1"), line
    [run] = runs_of(store)
    assert run.info.status == "FINISHED" and "logitlab.resumed_after_epoch" not in run.data.tags
    assert not state.parent.exists(), "the finished job cleared its checkpoint"
