"""Load: many jobs in one process, two sweeps writing to one SQLite store at once, and a tracking
server on PostgreSQL under 8 concurrent jobs. The timings are `make bench`'s (its load row); these
are the correctness: every run there, FINISHED, with every metric, and memory that stays flat."""

from __future__ import annotations

import csv
import gc
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from helpers import (ROOT, app, mlflow_server, parents_and_children, postgres_database, runs_of, subprocess_env,
                     tiny_blobs)


def _live_graphs() -> int:
    """Every graph alive, frozen ones included (each job's collection freezes what survives it)."""
    from tensorflow.python.framework.func_graph import FuncGraph

    gc.unfreeze()
    gc.collect()
    return sum(isinstance(o, FuncGraph) for o in gc.get_objects())


class _Cycle:
    def __init__(self) -> None:
        self.me = self  # garbage only a collection frees


def test_a_jobs_collection_frees_what_was_made_since_the_last_and_a_full_one_the_rest(monkeypatch):
    """Between jobs (logitlab.train.loop._clear_session) a collection frees the garbage made since
    the last one, then freezes what survived when there is much of it (FREEZE_ABOVE); what was alive
    then and dies later is freed by the next full collection, which runs once FULL_COLLECTION_AFTER
    objects have been frozen since the last."""
    import weakref

    from logitlab.train import loop

    monkeypatch.setattr(loop, "_frozen_since_full", 0)
    monkeypatch.setattr(loop, "FREEZE_ABOVE", 0)
    monkeypatch.setattr(loop, "FULL_COLLECTION_AFTER", 10**9)
    survivor = _Cycle()  # alive at the next collection, as a job's config is
    loop._clear_session()
    survivor_ref, made_after = weakref.ref(survivor), _Cycle()
    made_after_ref = weakref.ref(made_after)
    del survivor, made_after
    loop._clear_session()
    assert made_after_ref() is None, "garbage made since the last collection is freed by the next"
    assert survivor_ref() is not None, "frozen: not looked at by a job's collection"
    assert 0 < loop._frozen_since_full < 10**9
    monkeypatch.setattr(loop, "FULL_COLLECTION_AFTER", loop._frozen_since_full)
    loop._clear_session()
    assert survivor_ref() is None, "a full collection frees it"
    assert loop._frozen_since_full == 0


def test_a_jobs_few_survivors_stay_unfrozen_and_the_next_jobs_collection_frees_them(monkeypatch):
    """Below FREEZE_ABOVE survivors, nothing is frozen: a job's state that dies with the job (its
    config) is freed by the next job's collection, no full collection needed or counted."""
    import gc
    import weakref

    from logitlab.train import loop

    monkeypatch.setattr(loop, "_frozen_since_full", 0)
    monkeypatch.setattr(loop, "FREEZE_ABOVE", 10**9)
    monkeypatch.setattr(loop, "FULL_COLLECTION_AFTER", 10**9)
    frozen = gc.get_freeze_count()
    survivor = _Cycle()
    loop._clear_session()
    survivor_ref = weakref.ref(survivor)
    del survivor
    assert survivor_ref() is not None, "a cycle: only a collection frees it"
    loop._clear_session()
    assert survivor_ref() is None, "not frozen: the next job's collection frees it"
    assert loop._frozen_since_full == 0 and gc.get_freeze_count() <= frozen, "nothing frozen (objects may leave it)"


@pytest.mark.parametrize("trainer", ["fit", "gradient_tape"])
def test_a_job_leaves_no_training_graph_behind_for_the_next(trainer):
    """TensorFlow keeps the graph of every custom gradient it traces (Keras's optimizer traces one
    per train step) in a global registry: without dropping them, each job of a sweep kept its
    training graph alive, ~1.9 MB a blobs job."""
    from logitlab.schema import compose
    from logitlab.model.heads import head_of
    from logitlab.train.loop import fit_compiled, prepare
    from logitlab.train.tape import fit_gradient_tape

    rng = np.random.default_rng(0)
    data = {"x_train": rng.normal(size=(64, 2)).astype(np.float32), "y_train": np.arange(64) % 4}
    fit = fit_compiled if trainer == "fit" else fit_gradient_tape
    after = []
    for seed in range(4):
        cfg = compose(ROOT, ["dataset=blobs", f"trainer={trainer}", "trainer.epochs=1", "trainer.verbose=0",
                             f"seed={seed}"])
        model, x, y = prepare(cfg, head_of(cfg), data)
        fit(model, x, y, cfg, None, **({} if trainer == "fit" else {"head": head_of(cfg)}))
        del model
        after.append(_live_graphs())
    # the last job's graphs live until the next job starts; none of the jobs before it
    assert after[1] == after[2] == after[3], f"graphs alive after each job: {after}"


def _sweeps(uri: str) -> tuple[list, dict]:
    """The sweep runs, and each one's child runs by its id; every run of the store is one or the other."""
    parents, children = parents_and_children(uri)
    assert len(parents) + sum(map(len, children.values())) == len(runs_of(uri)), "no run outside a sweep"
    return list(parents.values()), children


@pytest.mark.slow
def test_100_blobs_jobs_in_one_process_all_finish_and_memory_stays_flat(tmp_path):
    data = tiny_blobs(tmp_path)  # make bench runs the reference blobs; the memory a job leaves is the same
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run(app("train", "-m", *data, "seed=range(0,100)", "trainer.epochs=1",
                              "trainer.validation_split=0", "evaluate.n_examples=1", "trainer.verbose=0",
                              f"tracking.uri='{uri}'", f"hydra.sweep.dir={tmp_path / 'sweep'}"),
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [parent], by_parent = _sweeps(uri)
    children = by_parent[parent.info.run_id]
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs_finished"] == 100
    assert len(children) == 100 and {r.info.status for r in children} == {"FINISHED"}
    assert len({r.data.tags["logitlab.pid"] for r in children}) == 1, "one process"
    rss = {int(r.data.tags["hydra.job.num"]) + 1: r.data.metrics["rss_mb"] for r in children}
    assert sorted(rss) == list(range(1, 101))
    growth = rss[100] / rss[10] - 1
    # the bar is 20%; the leak this guards against (see the test above) was +21%
    assert growth <= 0.05, f"resident memory {rss[10]:.0f} MiB after job 10, {rss[100]:.0f} MiB after job 100"
    assert all(r.data.metrics["peak_rss_mb"] >= r.data.metrics["rss_mb"] for r in children)


def _history(job_dir: Path) -> dict[str, list[float]]:
    """The job's own history.tsv: each metric's value at each epoch, as the job wrote it."""
    with open(job_dir / "history.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return {key: [float(row[key]) for row in rows] for key in rows[0] if key != "epoch"}


def _assert_every_metric_reached(client, run, job_dir: Path) -> None:
    """Every epoch of every metric the job wrote to its files is in its run, once, with its value;
    so is every test metric."""
    for key, values in _history(job_dir).items():
        logged = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in logged] == list(range(len(values))), (run.info.run_name, key)
        np.testing.assert_allclose([m.value for m in logged], values, rtol=1e-12, err_msg=key)
    written = json.loads((job_dir / "metrics.json").read_text())
    for key, value in written.items():
        if isinstance(value, float):
            assert run.data.metrics[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key
    missing = set(written) - set(run.data.metrics)
    assert not missing, f"{run.info.run_name}: test metrics not in the run: {sorted(missing)}"


def _job_dir(sweep_dir: Path, run) -> Path:
    return sweep_dir / run.data.tags["hydra.job.num"]


@pytest.mark.slow
def test_two_parallel_sweeps_writing_to_one_sqlite_store_lose_no_run(tmp_path):
    import mlflow

    data = tiny_blobs(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # created by whichever sweep comes first
    sweeps = {name: tmp_path / name for name in ("a", "b")}
    procs = {name: subprocess.Popen(
        app("train", "-m", "hydra/launcher=parallel", *data, "model.head=softmax,logit", "seed=0,1",
            "trainer.epochs=3", "trainer.verbose=0", f"tracking.uri='{uri}'", f"hydra.sweep.dir={sweep_dir}"),
        cwd=tmp_path, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for name, sweep_dir in sweeps.items()}
    errors = {name: proc.communicate(timeout=900)[1] for name, proc in procs.items()}
    for name, proc in procs.items():
        assert proc.returncode == 0, f"sweep {name}: {errors[name][-3000:]}"

    parents, by_parent = _sweeps(uri)
    children = [r for runs in by_parent.values() for r in runs]
    assert len(parents) == 2 and {p.info.status for p in parents} == {"FINISHED"}
    assert len(children) == 8 and {r.info.status for r in children} == {"FINISHED"}, "none lost, none RUNNING"
    client = mlflow.MlflowClient(uri)
    for parent, (name, sweep_dir) in zip(sorted(parents, key=lambda p: p.data.tags["hydra.sweep.dir"]),
                                         sorted(sweeps.items())):
        assert parent.data.tags["hydra.sweep.dir"] == str(sweep_dir.resolve())
        mine = by_parent[parent.info.run_id]
        assert sorted(int(r.data.tags["hydra.job.num"]) for r in mine) == list(range(4)), name
        for run in mine:
            _assert_every_metric_reached(client, run, _job_dir(sweep_dir, run))


@pytest.mark.slow
def test_the_server_on_postgresql_under_8_concurrent_jobs_loses_no_metric(tmp_path):
    import mlflow

    data = tiny_blobs(tmp_path)
    sweep_dir = tmp_path / "sweep"
    with postgres_database() as backend, mlflow_server(backend, tmp_path) as server:
        proc = subprocess.run(
            app("train", "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=8", *data, "seed=range(0,8)",
                "trainer.epochs=3", "trainer.verbose=0", "tracking=server", f"tracking.uri={server['url']}",
                f"hydra.sweep.dir={sweep_dir}"),
            cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        [parent], by_parent = _sweeps(server["url"])
        children = by_parent[parent.info.run_id]
        assert parent.data.metrics["jobs_finished"] == 8
        assert len(children) == 8 and {r.info.status for r in children} == {"FINISHED"}
        assert len({r.data.tags["logitlab.pid"] for r in children}) > 1, "the jobs ran in several processes"
        client = mlflow.MlflowClient(server["url"])
        for run in children:
            _assert_every_metric_reached(client, run, _job_dir(sweep_dir, run))
            assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"predictions.json", "outputs.npz"}
