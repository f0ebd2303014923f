"""Nothing stray: the README's commands that write files, run from the project root and from
`pipelines/`, leave git no untracked file (Hydra's run and sweep folders and `dvc plots show`'s
page land in the working directory, wherever it is); `make ui` opens the project's store, not a new
one in the folder it is started from."""

import os
import signal
import subprocess
from pathlib import Path

import pytest

from helpers import PYTHON, copy_project, free_port, run, subprocess_env, tiny_blobs, wait_for_http

BIN = Path(PYTHON).parent


def git(project: Path, *args: str) -> str:
    return run(["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args], project).stdout


@pytest.mark.slow
def test_the_readme_commands_leave_no_untracked_file_wherever_they_run(tmp_path):
    project = copy_project(tmp_path / "project")
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "the project as cloned")
    # tiny data and the store outside the copy: only what the commands themselves write lands in it
    tiny = [*tiny_blobs(tmp_path / "data"), "trainer.epochs=1", f"tracking.uri='sqlite:///{tmp_path / 'mlflow.db'}'"]
    env = subprocess_env()
    for cwd, script in ((project, "pipelines/{}.py"), (project / "pipelines", "{}.py")):
        run([PYTHON, script.format("train"), *tiny], cwd, env)                    # outputs/<date>/<time>/
        run([PYTHON, script.format("train"), "-m", *tiny, "seed=0"], cwd, env)    # multirun/<date>/<time>/
        run([str(BIN / "dvc"), "plots", "show"], cwd, env)                         # dvc_plots/index.html
    written = {cwd / name for cwd in (project, project / "pipelines") for name in ("outputs", "multirun", "dvc_plots")}
    assert all(path.is_dir() for path in written), "each command wrote where this test expects"
    assert git(project, "status", "--porcelain", "--untracked-files=all") == ""


@pytest.mark.slow
def test_make_ui_opens_the_projects_store_from_another_folder(tmp_path):
    """Started from another folder, with $MLFLOW_BACKEND_STORE_URI exported (as a team's server set-up
    does): the UI shows the project's experiment, a new experiment's artifacts go where the stages
    put them, and nothing is created in that folder."""
    import mlflow

    project = copy_project(tmp_path / "project")
    mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}").create_experiment("logitlab")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    port, log = free_port(), tmp_path / "ui.log"
    env = subprocess_env(MLFLOW_BACKEND_STORE_URI=f"sqlite:///{elsewhere / 'other.db'}")
    make = ["make", "-C", str(project), "ui", f"VENV={BIN.parent}", "STAMP=", f"PORT={port}"]  # STAMP=: no set-up
    with log.open("w") as out:
        proc = subprocess.Popen(make, cwd=elsewhere, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own process group: make and the UI stop together
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", proc, log)
        client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
        assert "logitlab" in {e.name for e in client.search_experiments()}
        created = client.get_experiment(client.create_experiment("from the ui"))
        assert created.artifact_location.startswith((project / "mlartifacts").as_uri())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert not list(elsewhere.iterdir()), "no store or artifact folder in the folder make ran from"
