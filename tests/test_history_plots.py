"""dvc.yaml's plots of the training histories (logitlab.stages.plots, written by `make params`): a
plot per dataset x task and loss, a line per variant, naming exactly the history files the train
stages write."""

import shutil
import subprocess

import yaml

from helpers import PYTHON, ROOT
from logitlab.stages.plots import plots_drift, write_plots


def history_outputs(project) -> set[str]:
    """The history files of DVC's own resolved stages (matrix items expanded by DVC)."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        return {out.def_path for stage in repo.index.stages for out in stage.outs
                if out.def_path.startswith("history/")}


def declared(project) -> dict[str, dict]:
    plots = yaml.safe_load((project / "dvc.yaml").read_text())["plots"]
    return {k: v for p in plots if isinstance(p, dict) for k, v in p.items()}


def test_the_plots_draw_every_history_the_stages_write_and_nothing_else():
    plots = declared(ROOT)
    in_loss = {path for plot_id, p in plots.items() if plot_id.startswith("loss_") for path in p["y"]}
    assert in_loss == history_outputs(ROOT)
    assert all(p["y"] == {path: plot_id.split("_" + plot_id.split("_")[-2])[0] for path in p["y"]}
               for plot_id, p in plots.items()), "each plot draws one field, its id's"
    val = {path for plot_id, p in plots.items() if plot_id.startswith("val_loss_") for path in p["y"]}
    assert val and not any("gradient_tape" in path for path in val), "a one-pass GradientTape run has no val_loss"
    for path in val:
        assert "val_loss" in (ROOT / path).read_text().splitlines()[0].split("\t"), path
    assert set(plots["loss_mnist_binary"]["y"]) == {f"history/mnist-binary-{h}.tsv" for h in
                                                     ("sigmoid", "logit", "sigmoid_strict")}


def test_the_plots_follow_the_pipeline_and_make_params_rewrites_only_them(tmp_path):
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    assert not plots_drift(tmp_path)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["pipeline"]["heads"].append("softmax_extra")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert plots_drift(tmp_path)
    before = (tmp_path / "dvc.yaml").read_text()
    write_plots(tmp_path)
    after = (tmp_path / "dvc.yaml").read_text()
    assert not plots_drift(tmp_path)
    assert "history/blobs-softmax_extra.tsv: loss" in after
    assert after.split("\nplots:\n")[0] == before.split("\nplots:\n")[0], "the stages and their comments unchanged"


def test_params_check_names_dvc_yaml_when_its_plots_are_stale(tmp_path):
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    check = [PYTHON, "-m", "logitlab", "params", "--check", "--root", str(tmp_path)]
    assert subprocess.run(check, capture_output=True, text=True).returncode == 0
    text = (tmp_path / "dvc.yaml").read_text()
    (tmp_path / "dvc.yaml").write_text(text.replace("        history/blobs-logit.tsv: loss\n", "", 1))
    proc = subprocess.run(check, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr == "dvc.yaml's plots disagree with params.yaml's pipeline; run `make params`\n"
    (tmp_path / "dvc.yaml").write_text(text.replace("  - report/plots\n", "  - report/plots\n    bad: [\n", 1))
    for command in (check, check[:-3] + ["--root", str(tmp_path)]):  # --check, and writing (which changes nothing)
        proc = subprocess.run(command, capture_output=True, text=True)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith(f"logitlab params: error: {tmp_path / 'dvc.yaml'} is not valid YAML at line ")
    assert "bad: [" in (tmp_path / "dvc.yaml").read_text(), "nothing written over the damaged file"
