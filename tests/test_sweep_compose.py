"""A sweep's job configs composed once per choice of config groups (logitlab.stages.sweep_compose):
each is Hydra's own composition of the job, its hydra node included, and stays so in a launcher's
worker process, where the loader arrives pickled."""

import pickle

import pytest
from omegaconf import OmegaConf

from helpers import multirun


def jobs_of(hydra_loader, master):
    from logitlab.stages.sweep_check import grid_jobs

    return grid_jobs(master, hydra_loader)[0]


def same(ours, hydras):
    """Node for node, interpolations unresolved, with the flags Hydra sets."""
    assert OmegaConf.to_yaml(ours) == OmegaConf.to_yaml(hydras)
    assert OmegaConf.is_struct(ours) == OmegaConf.is_struct(hydras)
    assert OmegaConf.is_readonly(ours.hydra) == OmegaConf.is_readonly(hydras.hydra)
    assert OmegaConf.get_type(ours.hydra) is OmegaConf.get_type(hydras.hydra)
    assert ours.hydra.job.override_dirname == hydras.hydra.job.override_dirname  # resolved where it is used


SWEEPS = [
    # seeds only: one composition for the whole sweep
    (["dataset=blobs", "seed=range(0,4)", "trainer.verbose=0"], 1),
    # groups and values together, an experiment that sweeps model.head in hydra.sweeper.params
    (["experiment=blobs_softmax", "trainer=fit,gradient_tape", "model=mlp,mlp_784_256", "seed=0,3",
      "trainer.epochs=2,5"], 4),
    # the launcher's own overrides, a key the job adds, one the dirname leaves out
    (["hydra/launcher=parallel", "hydra.sweep.dir=/tmp/somewhere", "+extra.note=hello,bye", "seed=1,2",
      "hydra.job.config.override_dirname.exclude_keys=[seed]"], 1),
]


@pytest.mark.parametrize(("overrides", "compositions"), SWEEPS)
def test_every_job_config_is_hydras_own(hydra_loader, overrides, compositions):
    from logitlab.stages.sweep_compose import SweepComposer

    master = multirun(hydra_loader, *overrides)
    composer = SweepComposer(hydra_loader)
    jobs = jobs_of(hydra_loader, master)
    assert len(jobs) > 1
    for job in jobs:
        same(composer.load_sweep_config(master, list(job)), hydra_loader.load_sweep_config(master, list(job)))
    assert len(composer.bases) == compositions


def test_a_job_config_does_not_share_nodes_with_the_next(hydra_loader):
    """A launcher writes into each job's config (hydra.job.num, the output dir): a later job must not see it."""
    from omegaconf import open_dict

    from logitlab.stages.sweep_compose import SweepComposer

    master = multirun(hydra_loader, "seed=0,1")
    composer = SweepComposer(hydra_loader)
    first = composer.load_sweep_config(master, ["seed=0"])
    with open_dict(first):
        first.hydra.job.num = 7
        first.trainer.epochs = 99
    second = composer.load_sweep_config(master, ["seed=1"])
    same(second, hydra_loader.load_sweep_config(master, ["seed=1"]))


def test_installed_on_the_loader_it_is_what_the_sweeper_and_launcher_call_and_survives_pickling(hydra_loader):
    """joblib and submitit pickle the loader to their workers: there it composes as Hydra does, and
    keeps its compositions from one job to the next."""
    from logitlab.stages import sweep_compose

    master = multirun(hydra_loader, "dataset=blobs", "seed=0,1,2")
    composer = sweep_compose.install(hydra_loader)
    try:
        assert hydra_loader.load_sweep_config.__self__ is composer
        hydras = [type(hydra_loader).load_sweep_config(hydra_loader, master, [f"seed={i}"]) for i in range(3)]
        same(hydra_loader.load_sweep_config(master, ["seed=0"]), hydras[0])
        # as BasicSweeper.validate_batch_is_legal calls it: by Hydra's parameter names
        same(hydra_loader.load_sweep_config(master_config=master, sweep_overrides=["seed=0"]), hydras[0])
        # a worker process starts without this one's compositions
        sweep_compose._BASES.pop(composer.token)
        worker = pickle.loads(pickle.dumps(hydra_loader))
        assert worker.load_sweep_config.__self__ is not composer
        assert worker.load_sweep_config.__self__.bases == {}
        same(worker.load_sweep_config(master, ["seed=1"]), hydras[1])
        again = pickle.loads(pickle.dumps(hydra_loader))  # the worker's next job: the same sweep's compositions
        assert again.load_sweep_config.__self__.bases is worker.load_sweep_config.__self__.bases
        assert len(again.load_sweep_config.__self__.bases) == 1
        same(again.load_sweep_config(master, ["seed=2"]), hydras[2])
    finally:
        sweep_compose.uninstall(hydra_loader)
    assert "load_sweep_config" not in vars(hydra_loader)
    assert composer.token not in sweep_compose._BASES, "the sweep's compositions are not kept after it"


def test_an_override_the_copy_refuses_gets_hydras_own_error(hydra_loader):
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from logitlab.stages.sweep_compose import SweepComposer

    master = multirun(hydra_loader, "seed=0,1")
    errors = []
    for compose in (SweepComposer(hydra_loader).load_sweep_config, hydra_loader.load_sweep_config):
        with pytest.raises((HydraException, OmegaConfBaseException)) as caught:
            compose(master, ["no_such_key=1"])
        errors.append(str(caught.value))
    assert errors[0] == errors[1] and "no_such_key" in errors[0]
