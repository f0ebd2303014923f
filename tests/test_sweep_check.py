"""A sweep's configs checked before its first job (logitlab.stages.sweep_check): a bad value in a
grid fails the sweep at once naming the job, whatever the launcher; an optuna search space is
checked at its bounds and choices; and the configs checked are the ones Hydra gives the jobs."""

import subprocess

import pytest
from omegaconf import OmegaConf

from helpers import app, multirun, subprocess_env, tiny_blobs
from logitlab.errors import UserError


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """Real data for the sweeps below: without the check, their first job would train."""
    return [o for o in tiny_blobs(tmp_path_factory.mktemp("blobs")) if not o.startswith("dataset=")]


def refused(tmp_path, *overrides):
    """The sweep run as a user runs it, in an empty folder, its store and sweep folder in it."""
    proc = subprocess.run(app("train", "-m", *overrides, "trainer.epochs=1",
                              f"tracking.uri='sqlite:///{tmp_path / 'mlflow.db'}'", f"hydra.sweep.dir={tmp_path / 'sweep'}"),
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Launching" not in proc.stdout
    assert list(tmp_path.iterdir()) == [], "nothing written: no sweep folder, no store, no optuna storage"
    return proc.stderr.strip()


@pytest.mark.parametrize("launcher", ["basic", "parallel", "slurm"])
def test_a_bad_value_in_a_grid_fails_the_sweep_before_any_job_trains(tmp_path, blobs, launcher):
    """The issue's example: blobs would train first, then `mnst` fail. The SLURM launcher needs no
    cluster here: the sweep is refused before anything is submitted."""
    chosen = [] if launcher == "basic" else [f"hydra/launcher={launcher}"]
    line = refused(tmp_path, *chosen, *blobs, "dataset=blobs,mnst")
    assert line == "logitlab train: error: sweep job 1 (dataset=mnst): unknown dataset 'mnst'; valid: blobs, mnist"


def test_the_refused_job_is_named_with_its_swept_values_and_hydras_number(tmp_path, blobs):
    """Two swept keys, the bad combination last: job 3 as Hydra numbers it (head-major)."""
    line = refused(tmp_path, *blobs, "model.head=logit,softmax", "task=multiclass,binary")
    assert line == ("logitlab train: error: sweep job 3 (model.head=softmax task=binary): unknown model.head "
                    "'softmax' for task binary; valid: logit, sigmoid, sigmoid_strict")


def test_an_optuna_bound_the_schema_refuses_fails_before_the_study_starts(tmp_path, blobs):
    line = refused(tmp_path, "hydra/sweeper=lr_search", "optimizer.lr=interval(0,0.1)", *blobs)
    assert line == ("logitlab train: error: optuna search space: the trial optimizer.lr=0.0 is refused: "
                    "optimizer.lr must be a positive number, got 0.0")


# --------------------------------------------------------------------------- in-process


def plain(cfg):
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


def test_each_checked_config_is_the_one_hydra_composes_for_the_job(hydra_loader):
    """Group choices (an experiment with its own sweeper params, trainer, model) and values swept
    together: every job's config equals Hydra's own composition of it, at one composition per
    choice of groups."""
    from logitlab.stages.sweep_check import JobConfigs, grid_jobs

    cfg = multirun(hydra_loader, "experiment=blobs_softmax", "trainer=fit,gradient_tape", "model=mlp,mlp_784_256",
                   "seed=0,3", "optimizer.lr=0.01", "trainer.epochs=2,5")
    jobs, swept = grid_jobs(cfg, hydra_loader)
    # blobs_softmax sweeps model.head (softmax, logit) in hydra.sweeper.params, ahead of the command line
    assert len(jobs) == 2 * 2 * 2 * 2 * 2 and jobs[0][0] == "model.head=softmax" and jobs[1][0] == "model.head=softmax"
    assert swept == {"model.head", "trainer", "model", "seed", "trainer.epochs"}
    configs = JobConfigs(cfg, hydra_loader)
    for job in jobs:
        assert plain(configs.compose(job)) == plain(hydra_loader.load_sweep_config(cfg, job)), job
    assert len(configs.bases) == 4, "one composition per choice of trainer and model"
    composed = [plain(configs.compose(j)) for j in jobs]
    assert {(c["model"]["name"], c["trainer"]["name"]) for c in composed} == {
        (m, t) for m in ("mlp", "mlp_784_256") for t in ("fit", "gradient_tape")}
    assert {c["model"]["layers"][0] for c in composed} == {25}, "the experiment's layers, as Hydra has them"


def test_the_shipped_sweeps_pass_the_check(hydra_loader):
    from logitlab.stages.sweep_check import check_sweep

    assert check_sweep(multirun(hydra_loader, "hydra/sweeper=lr_search", "dataset=blobs"), hydra_loader) == 2, "lr's two bounds"
    assert check_sweep(multirun(hydra_loader, "experiment=blobs_softmax", "seed=0,1,2"), hydra_loader) == 6
    assert check_sweep(multirun(hydra_loader, "task=binary", "model.head=sigmoid,logit,sigmoid_strict",
                                "trainer=fit,gradient_tape"), hydra_loader) == 6


@pytest.mark.parametrize(("overrides", "message"), [
    (["hydra/sweeper=lr_search", "model.head=choice(logit,sofmax)"],
     ("optuna search space: the trial optimizer.lr=0.0001 model.head=sofmax is refused: unknown model.head "
      "'sofmax' for task multiclass; valid: softmax, logit, softmax_strict, sigmoid")),
    (["hydra/sweeper=lr_search", "optimizer.lr=tag(log,interval(1e-4,10))", "trainer.validation_split=0.1,0.2"],
     None),  # 10 is a valid learning rate; a sweep of a fixed key's values is a choice for optuna
    (["hydra/sweeper=lr_search", "trainer.validation_split=interval(0.5,1.0)"],
     ("optuna search space: the trial optimizer.lr=0.0001 trainer.validation_split=1.0 is refused: "
      "trainer.validation_split must be a number in [0, 1), got 1.0")),
    (["hydra/sweeper=lr_search", "trainer.validation_split=tag(log,interval(0,0.5))"],
     ("optuna search space trainer.validation_split=tag(log,interval(0,0.5)): The `low` value must be larger "
      "than 0 for a log distribution (low=0.0, high=0.5).")),
    (["hydra/sweeper=lr_search", "seed=range(0,3)", "seed=4"], None),  # a fixed value wins, as in the sweeper
    (["seed=0,1", "optimizer.lr=interval(0.1,0.2)"],
     ("a grid sweep takes a list of values or a range(...), not 'optimizer.lr=interval(0.1,0.2)'; an interval "
      "needs a sweeper that samples it (hydra/sweeper=lr_search)")),
    (["model.layers=[2,3],[2,x]"],
     "sweep job 1 (model.layers=[2,x]): model.layers[1]: Value 'x' of type 'str' could not be converted to Integer"),
])
def test_what_the_check_refuses_and_lets_through(hydra_loader, overrides, message):
    from logitlab.stages.sweep_check import check_sweep

    cfg = multirun(hydra_loader, *overrides)
    if message is None:
        assert check_sweep(cfg, hydra_loader) > 0
        return
    with pytest.raises(UserError) as refusal:
        check_sweep(cfg, hydra_loader)
    assert str(refusal.value) == message


def test_a_sweeper_the_check_does_not_know_is_left_alone(hydra_loader):
    from omegaconf import open_dict

    from logitlab.stages.sweep_check import check_sweep

    cfg = multirun(hydra_loader, "dataset=blobs,mnst")
    with open_dict(cfg):
        cfg.hydra.sweeper._target_ = "somewhere.OtherSweeper"
    assert check_sweep(cfg, hydra_loader) == 0
