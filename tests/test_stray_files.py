"""Nothing stray: the README's commands that write files, run from the project root and from
`pipelines/`, leave git no untracked file (Hydra's run and sweep folders and `dvc plots show`'s
page land in the working directory, wherever it is)."""

from pathlib import Path

import pytest

from helpers import PYTHON, copy_project, run, subprocess_env, tiny_blobs

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
