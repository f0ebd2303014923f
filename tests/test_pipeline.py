"""The real entry points: a user mistake on the command line, a Hydra multirun, and `dvc repro`."""

import contextlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from helpers import (PYTHON, ROOT, app, history_files_drawn, keras_npz_bytes, mnist_arrays, run, sha256_bytes,
                     subprocess_env, tiny_blobs)

BIN = Path(PYTHON).parent
TRAIN_STAGES = {f"train@{d}-{h}" for d in ("mnist", "blobs") for h in ("softmax", "logit")} | {
    "train_binary@mnist-logit", "train_binary@blobs-logit", "train_tape@blobs-logit"}
VARIANTS = {f"{d}-{h}" for d in ("mnist", "blobs") for h in ("softmax", "logit")} | {
    "mnist-binary-logit", "blobs-binary-logit", "blobs-logit-gradient_tape"}
RUN_METRICS = {"loss", "accuracy", "val_loss", "val_accuracy",
               "test_loss", "test_accuracy", "output_min", "output_max", "prob_min", "prob_max"}
NUMERICS = {"test_loss_f64", "loss_err_probs_max", "loss_err_logits_max", "loss_err_train_max",
            "prob_clip_band_fraction", "clip_ceiling_fraction"}
MULTICLASS_NUMERICS = {"probs_sum_max_error", "argmax_tie_fraction"}  # a binary head's p is one number


def numerics_of(variant: str) -> set[str]:
    return NUMERICS if "-binary-" in variant else NUMERICS | MULTICLASS_NUMERICS


def ran_stages(proc) -> set[str]:
    return {line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")}


def _stop_queue_workers(project: Path) -> None:
    """The DVC queue's workers (celery, their pids in .dvc/tmp/exps/celery/): one can hang in its
    shutdown once the queue is empty, so each still alive after `dvc queue stop` is killed."""
    import os
    import signal

    import psutil

    for pid_file in (project / ".dvc" / "tmp" / "exps" / "celery").glob("*.pid"):
        try:
            worker = psutil.Process(int(pid_file.read_text().strip()))
            if project.resolve() == Path(worker.cwd()).resolve():  # the pid is still that worker's
                os.kill(worker.pid, signal.SIGKILL)
                worker.wait(timeout=30)
        except (ValueError, OSError, psutil.Error):
            pass  # gone already


def finished_runs(uri):
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("logitlab")
    assert experiment is not None, f"no logitlab experiment in {uri}"
    return client.search_runs([experiment.experiment_id])


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    return tiny_blobs(tmp_path_factory.mktemp("blobs"))


def leftovers(tmp_path):
    """What a failed command left in its working folder, besides the test's own inputs."""
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    "stage, args, message",
    [
        ("train", ["model.head=tanh"], "unknown model.head 'tanh' for task multiclass; valid: softmax, logit, softmax_strict, sigmoid"),
        ("train", ["dataset=cifar"], "unknown dataset 'cifar'; valid: blobs, mnist"),
        ("train", ["trainer=foo"], "unknown trainer 'foo' in override 'trainer=foo'; valid: fit, gradient_tape"),
        ("train", ["trainer.name=foo"], "trainer.name: Invalid value 'foo', expected one of [fit, gradient_tape]"),
        ("train", ["datasets=mnist"], "'datasets' holds every dataset's settings; choose one with dataset=NAME, "
                                      "e.g. dataset=mnist (valid: blobs, mnist), not 'datasets=mnist'"),
        ("train", ["-m", "heads=logit,softmax"], "'heads' holds every head's settings; choose one with model.head=NAME, "
                                                 "e.g. model.head=logit (valid: logit, sigmoid, sigmoid_strict, softmax, "
                                                 "softmax_strict), not 'heads=logit,softmax'"),
        ("train", ["task=binary", "model.head=softmax"], "unknown model.head 'softmax' for task binary; valid: logit, "
                                                         "sigmoid, sigmoid_strict"),
        ("train", ["trainer.epochs=-1"], "trainer.epochs must be a positive whole number, got -1"),
        ("train", ["trainer.epochs=0"], "trainer.epochs must be a positive whole number, got 0"),
        ("train", ["trainer.batch_size=0"], "trainer.batch_size must be a positive whole number, got 0"),
        ("train", ["optimizer.lr=0"], "optimizer.lr must be a positive number, got 0.0"),
        ("train", ["optimizer.lr=-1e-3"], "optimizer.lr must be a positive number, got -0.001"),
        ("train", ["optimizer.lr=fast"], "optimizer.lr: Value 'fast' of type 'str' could not be converted to Float"),
        ("train", ["model.head=[softmax"], "malformed override 'model.head=[softmax': no viable alternative at input "
                                           "'[softmax'; see https://hydra.cc/docs/advanced/override_grammar/basic/"),
        ("train", ["trainer.epochz=3"], "unknown key 'trainer.epochz' in override 'trainer.epochz=3'; valid under trainer: "
                                        "name, epochs, batch_size, validation_split, steps_per_execution, jit_compile, shuffle_buffer, "
                                        "log_every_n_steps, max_loss, verbose, train_on, checkpoint"),
        ("train", ["+trainer.epochz=3"], "unknown key 'trainer.epochz'; valid under trainer: "
                                         "name, epochs, batch_size, validation_split, steps_per_execution, jit_compile, "
                                         "shuffle_buffer, log_every_n_steps, max_loss, verbose, train_on, checkpoint"),
        ("train", ["experiment=blobs"], "unknown experiment 'blobs' in override 'experiment=blobs'; valid: blobs_sigmoid, "
                                        "blobs_softmax, course_logistic, course_mnist, mnist_gradient_tape, numerics_study"),
        ("train", ["evaluate.split=val"], "evaluate.split: Invalid value 'val', expected one of [test, train]"),
        ("train", ["-m", "trainer=fit,tape"], "unknown trainer 'tape' in override 'trainer=fit,tape'; valid: fit, gradient_tape"),
        ("report", ["hydra/launcher=paralel"], "unknown launcher 'paralel' in override 'hydra/launcher=paralel'; valid: "
                                                 "basic, joblib, parallel, slurm, submitit_local, submitit_slurm"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, stage, args, message):
    proc = subprocess.run(app(stage, *args, f"tracking.uri='sqlite:///{tmp_path / 'mlflow.db'}'",
                              f"hydra.run.dir={tmp_path / 'job'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"),
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"logitlab {stage}: error: {message}"
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not [f for f in leftovers(tmp_path) if not f.endswith(".log") and "/.hydra/" not in f], \
        "nothing but Hydra's own records of the job is written"


def test_a_bad_value_is_refused_before_tensorflow_is_imported():
    script = ("import sys; from logitlab.stages import app\nsys.argv = sys.argv[1:]\n"
              "try:\n    app.launch(lambda: None, sys.argv[0])\nexcept SystemExit as exc:\n    code = exc.code\n"
              "print(code, 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    proc = subprocess.run([PYTHON, "-c", script, str(ROOT / "pipelines" / "train.py"), "trainer.epochs=0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "False", "False"], proc.stderr[-2000:]
    assert proc.stderr.strip() == "logitlab train: error: trainer.epochs must be a positive whole number, got 0"


def test_import_keras_leaves_out_its_unused_extras_which_stay_importable():
    """Keras imported without scikit-learn and matplotlib.pyplot takes them for absent; they import as
    usual afterwards."""
    script = ("import sys; from logitlab.model import import_keras\n"
              "import_keras()\n"
              "import keras.src.wrappers.fixes as fixes, keras.src.visualization.plot_image_gallery as gallery\n"
              "print('keras' in sys.modules, 'sklearn' in sys.modules, 'matplotlib' in sys.modules,"
              " fixes.sklearn is None, gallery.plt is None)\n"
              "from sklearn.datasets import make_blobs; from matplotlib.figure import Figure\n"
              "print(make_blobs(n_samples=4, random_state=0)[0].shape, Figure().get_figwidth())\n")
    proc = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["True False False True True", "(4, 2) 6.4"]


def test_a_train_job_never_imports_scikit_learn_or_pyplot(tmp_path, blobs):
    """A whole train job, run as `python pipelines/train.py` runs it: at its end Keras came without the
    extras no stage uses (0.75 s of a stage's imports), and the run's picture drew with matplotlib."""
    script = ("import atexit, runpy, sys\n"
              "atexit.register(lambda: print('IMPORTED', sorted(m for m in ('keras', 'matplotlib.figure', 'sklearn',"
              " 'matplotlib.pyplot') if m in sys.modules)))\n"
              "sys.argv = sys.argv[1:]\n"
              "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    proc = subprocess.run([PYTHON, "-c", script, *app("train", *blobs, "trainer.epochs=1",
                                                       f"tracking.uri='sqlite:///{tmp_path / 'm.db'}'",
                                                       f"hydra.run.dir={tmp_path / 'job'}")[1:]],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "job" / "outputs.png").stat().st_size > 10_000, "the run's picture"
    [imported] = [line for line in proc.stdout.splitlines() if line.startswith("IMPORTED ")]
    assert imported == "IMPORTED ['keras', 'matplotlib.figure']"


def test_test_fraction_outside_zero_one_is_refused(tmp_path, blobs):
    processed = tmp_path / "processed"
    for bad, shown in (("1.5", "1.5"), ("0", "0.0")):
        proc = subprocess.run(app("preprocess", *blobs[:-1], f"paths.processed={processed}",
                                  f"datasets.blobs.preprocess.test_size={bad}", f"hydra.run.dir={tmp_path / 'job'}"),
                              cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines()[-1] == (
            f"logitlab preprocess: error: datasets.blobs.preprocess.test_size must be a number in (0, 1), got {shown}")
        assert not processed.exists()


def test_missing_processed_data_names_the_stage_to_run(tmp_path, blobs):
    empty = tmp_path / "nothing"
    proc = subprocess.run(app("train", *blobs[:-1], f"paths.processed={empty}", f"tracking.uri='sqlite:///{tmp_path / 'm.db'}'",
                              f"hydra.run.dir={tmp_path / 'job'}"),
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"logitlab train: error: {empty / 'blobs.npz'} does not exist; run its stage first: dvc repro preprocess@blobs")
    assert not (tmp_path / "m.db").exists(), "the tracking store is not even opened"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("stage, kind, remake", [
    ("preprocess", "raw", "fetch@blobs"),
    ("train", "processed", "preprocess@blobs"),
])
def test_a_damaged_input_file_is_one_line_naming_it_and_its_remake(tmp_path, blobs, stage, kind, remake):
    import shutil

    damaged = tmp_path / kind
    shutil.copytree(next(Path(o.split("=", 1)[1]) for o in blobs if o.startswith(f"paths.{kind}=")), damaged)
    truncate(damaged / "blobs.npz")
    out = tmp_path / "out"
    proc = subprocess.run(app(stage, *blobs, f"paths.{kind}={damaged}", f"paths.processed={out}" if kind == "raw" else
                              f"paths.models={out}", "layout=pipeline", f"tracking.uri='sqlite:///{tmp_path / 'm.db'}'",
                              f"hydra.run.dir={tmp_path / 'job'}"),
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"logitlab {stage}: error: {damaged / 'blobs.npz'} is damaged (")
    assert last.endswith(f"); remake it: dvc repro -f {remake}")
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not (tmp_path / "m.db").exists(), "nothing written, the store not even opened"


@pytest.mark.slow
def test_damaged_outputs_fail_the_report_in_one_line_and_keep_the_last_report(tmp_path, blobs):
    """The pipeline's layout in a folder of its own: one variant trained, then its outputs damaged."""
    paths = [f"paths.{k}={tmp_path / k}" for k in ("models", "metrics", "history", "predictions")]
    only_blobs_logit = ["pipeline.datasets=[blobs]", "pipeline.heads=[logit]", "pipeline.binary_heads=[]",
                        "pipeline.gradient_tape.datasets=[]"]
    common = [*blobs, *paths, f"tracking.uri='sqlite:///{tmp_path / 'm.db'}'"]
    run(app("train", *common, "layout=pipeline", "model.head=logit", "trainer.epochs=1",
            f"hydra.run.dir={tmp_path / 'train'}"), tmp_path, subprocess_env())
    report = [*common, *only_blobs_logit, f"report.out_dir={tmp_path / 'report'}", f"hydra.run.dir={tmp_path / 'job'}"]
    run(app("report", *report), tmp_path, subprocess_env())
    before = {p.name: p.read_bytes() for p in (tmp_path / "report").rglob("*") if p.is_file()}
    assert "decision_regions_blobs_multiclass.png" in before and "summary.csv" in before

    outputs = tmp_path / "models" / "blobs-logit" / "outputs.npz"
    truncate(outputs)
    proc = subprocess.run(app("report", *report), cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"logitlab report: error: {outputs} is damaged (")
    assert last.endswith("); remake it: dvc repro -f train@blobs-logit")
    assert "Traceback" not in proc.stderr
    after = {p.name: p.read_bytes() for p in (tmp_path / "report").rglob("*") if p.is_file()}
    assert after == before, "the last report is left as it was"


@pytest.mark.slow  # a real app or server in a subprocess
@pytest.mark.parametrize("store", ["none", "another experiment"])
def test_a_report_with_nothing_to_report_creates_nothing(tmp_path, store):
    """`report.runs=experiment` with no training run to read: one line, exit 2, and no store file,
    experiment or report made for it (Hydra's own record of the job aside)."""
    import mlflow

    db = tmp_path / "mlflow.db"
    if store == "another experiment":
        mlflow.MlflowClient(f"sqlite:///{db}").create_experiment("other")
    before = leftovers(tmp_path)
    proc = subprocess.run(app("report", "report.runs=experiment", f"tracking.uri='sqlite:///{db}'",
                              f"report.out_dir={tmp_path / 'report'}", f"hydra.run.dir={tmp_path / 'job'}"),
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "logitlab report: error: no finished training runs in MLflow experiment 'logitlab'")
    assert "Traceback" not in proc.stderr
    made = [f for f in leftovers(tmp_path) if f not in before and not f.startswith("job/")]
    assert not made, "no store file, lock file or report"
    if store != "none":
        names = [e.name for e in mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()]
        assert sorted(names) == ["Default", "other"], "no experiment created"


@pytest.mark.parametrize("bad, problem", [
    ({"x_train": np.zeros((10, 28, 27), np.uint8)}, "x_train must be uint8 of shape (N, 28, 28), got uint8 (10, 28, 27)"),
    ({"x_test": np.zeros((5, 28, 28), np.float64)}, "x_test must be uint8 of shape (N, 28, 28), got float64 (5, 28, 28)"),
])
def test_local_mnist_file_with_wrong_shapes_or_dtypes_is_refused(tmp_path, bad, problem):
    arrays = {**mnist_arrays(n_train=10, n_test=5), **bad}
    body = keras_npz_bytes(arrays)
    local = tmp_path / "mine.npz"
    local.write_bytes(body)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "mnist.npz").write_bytes(b"the previous good file")
    source = f"{{name:local,type:file,path:'{local}',sha256:{sha256_bytes(body)},format:keras_npz}}"
    proc = subprocess.run(app("fetch", "dataset=mnist", f"datasets.mnist.fetch.sources=[{source}]",
                              "datasets.mnist.fetch.array_sha256=null", f"paths.raw={raw}", f"hydra.run.dir={tmp_path / 'job'}"),
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"logitlab fetch: error: could not fetch mnist from any source: local (file): {problem}")
    assert "Traceback" not in proc.stderr
    assert (raw / "mnist.npz").read_bytes() == b"the previous good file"
    assert sorted(p.name for p in raw.iterdir()) == ["mnist.npz"], "no temporary file left"


@pytest.mark.slow
def test_dvc_repro_end_to_end(tmp_path, tiny_pipeline):
    """The session's tiny pipeline, run from nothing by a plain `dvc repro`, then changed in a copy."""
    project = tmp_path / "project"
    shutil.copytree(tiny_pipeline["serial"], project, symlinks=True)
    env = subprocess_env()
    dvc = str(BIN / "dvc")

    first = tiny_pipeline["serial_run"]
    assert ran_stages(first) == {f"{s}@{d}" for s in ("fetch", "preprocess") for d in ("mnist", "blobs")} | TRAIN_STAGES | {
        "report"}, "one stage per variant: it trains and evaluates"

    everything = finished_runs(f"sqlite:///{project / 'mlflow.db'}")
    runs = [r for r in everything if "logitlab.variant" in r.data.tags]
    assert sorted(r.info.run_name for r in runs) == sorted(VARIANTS), "one run per variant"
    for r in runs:
        assert RUN_METRICS | numerics_of(r.info.run_name) <= set(r.data.metrics), r.info.run_name
        assert r.info.run_name == r.data.tags["logitlab.variant"]
        assert r.data.tags["numerics.train_loss_path"] == "logits"
        metrics = json.loads((project / "metrics" / f"{r.info.run_name}.json").read_text())
        assert metrics["test_loss"] == pytest.approx(r.data.metrics["test_loss"]), "the file and the run agree"
    assert [r.data.tags.get("logitlab.kind") for r in everything if r not in runs] == ["report"]
    summary = (project / "report" / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + len(VARIANTS)
    plots = json.loads(run([dvc, "plots", "show", "--json"], project, env).stdout)
    assert "report/plots/digits_mnist.png" in plots["data"], sorted(plots["data"])
    drawn = history_files_drawn(plots["data"], ("loss_",))
    assert drawn == {f"{v}.tsv" for v in VARIANTS}, "every variant's epochs are a line of a loss plot"

    shown = json.loads(run([dvc, "metrics", "show", "--json"], project, env).stdout)
    files = next(iter(shown.values()))["data"]
    assert {Path(f).stem for f in files} == VARIANTS
    for f, content in files.items():
        assert RUN_METRICS - {"loss", "accuracy", "val_loss", "val_accuracy"} | numerics_of(f) <= set(content["data"]), f

    # MLflow-native models: one logged model per variant with its test metrics on the test set, the
    # training and test sets as inputs digested by DVC's hash, and the registry with an alias per head.
    import mlflow
    import yaml

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    models = client.search_logged_models(experiment_ids=[runs[0].info.experiment_id])
    assert sorted(m.name for m in models) == sorted(VARIANTS), "one logged model per variant"
    for model in models:
        linked = {m.key: m for m in model.metrics}
        assert linked["test_loss"].dataset_name == f"{model.tags['dataset']}-test", model.name
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    for r in runs:
        md5 = lock[f"preprocess@{r.data.tags['dataset']}"]["outs"][0]["md5"]
        assert sorted((d.dataset.name, d.dataset.digest) for d in r.inputs.dataset_inputs) == sorted(
            (f"{r.data.tags['dataset']}-{split}", md5) for split in ("test", "train")), r.info.run_name
    aliases = {m.name: set(m.aliases) for m in client.search_registered_models()}
    assert aliases == {"logitlab-mnist-25-15-relu": {"softmax", "logit", "champion"},
                       "logitlab-blobs-25-15-relu": {"softmax", "logit", "logit_gradient_tape", "champion"},
                       "logitlab-mnist-binary-25-15-relu": {"logit", "champion"},
                       "logitlab-blobs-binary-25-15-relu": {"logit", "champion"}}
    versions = sorted((v.name, v.version) for v in client.search_model_versions())
    assert len(versions) == len(VARIANTS)

    second = run([dvc, "repro"], project, env)
    assert "Running stage" not in second.stdout, second.stdout
    assert sorted((v.name, v.version) for v in client.search_model_versions()) == versions, "no new versions"

    # DVC is the source of truth: without any tracking store, a stage reproduces from DVC's files
    # alone, the report included, and its run lands in a new store.
    (project / "mlflow.db").rename(tmp_path / "old-mlflow.db")
    report_before = (project / "report" / "summary.csv").read_text()
    run([dvc, "repro", "--force", "--single-item", "train@blobs-logit", "report"], project, env)
    assert (project / "report" / "summary.csv").read_text() == report_before, "the same files, bit for bit"
    import sqlite3  # not MLflow's client: this process keeps its engine on the old file's inode

    with contextlib.closing(sqlite3.connect(project / "mlflow.db")) as db:
        fresh = sorted(name for (name,) in db.execute("select name from runs where status = 'FINISHED'"))
    assert fresh == ["blobs-logit", "report"], "the runs simply land in the new store"
    (tmp_path / "old-mlflow.db").replace(project / "mlflow.db")  # the store this process's client still has open

    # Every module a stage imports is its dependency: a change to the heads reruns training.
    heads = project / "src" / "logitlab" / "model" / "heads.py"
    original = heads.read_text()
    heads.write_text(original + "\n# a change\n")
    status = json.loads(run([dvc, "status", "--json"], project, env).stdout)
    assert TRAIN_STAGES <= set(status), sorted(status)
    heads.write_text(original)
    # ... and a change to the tracking code reruns no data stage: fetch and preprocess import none of it.
    store = project / "src" / "logitlab" / "tracking" / "store.py"
    original_store = store.read_text()
    store.write_text(original_store + "\n# a change\n")
    status = json.loads(run([dvc, "status", "--json"], project, env).stdout)
    assert TRAIN_STAGES <= set(status) and not {s for s in status if s.startswith(("fetch@", "preprocess@"))}, status
    store.write_text(original_store)
    assert "Running stage" not in run([dvc, "repro"], project, env).stdout

    # DVC experiments on the same project: Hydra composition is on (.dvc/config), so -S overrides
    # compose conf/ into params.yaml. One experiment in the workspace, two through the queue.
    git = ["git", "-c", "user.name=logitlab-tests", "-c", "user.email=tests@logitlab.invalid"]
    run(git + ["add", "-A"], project)
    run(git + ["commit", "-qm", "baseline"], project)
    exp_env = dict(env, GIT_AUTHOR_NAME="logitlab-tests", GIT_AUTHOR_EMAIL="tests@logitlab.invalid",
                   GIT_COMMITTER_NAME="logitlab-tests", GIT_COMMITTER_EMAIL="tests@logitlab.invalid")
    target = "train@blobs-logit"
    ran = run([dvc, "exp", "run", "-n", "lr-01", "-S", "optimizer.lr=0.01", target], project, exp_env, timeout=900)
    assert ran_stages(ran) == {target}
    assert OmegaConf.load(project / "params.yaml").optimizer.lr == 0.01, "DVC composed conf/ with the override"
    for lr, name in (("0.003", "lr-003"), ("0.03", "lr-03")):
        run([dvc, "exp", "run", "--queue", "-n", name, "-S", f"optimizer.lr={lr}", target], project, exp_env)
    try:
        # `dvc queue start` waits on its workers, which outlive the queue: no pipe of ours to hold open
        subprocess.run([dvc, "queue", "start", "-j", "2"], cwd=project, env=exp_env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, timeout=120)
        deadline = time.monotonic() + 900
        while "Queued" in (status := run([dvc, "queue", "status"], project, exp_env).stdout) or "Running" in status:
            assert time.monotonic() < deadline, status
            time.sleep(2)
    finally:
        subprocess.run([dvc, "queue", "stop", "--kill"], cwd=project, env=exp_env, capture_output=True, timeout=120)
        _stop_queue_workers(project)
    assert status.count("Success") == 2, status

    shown = run([dvc, "exp", "show", "--json"], project, exp_env).stdout
    experiments = {}
    for baseline in json.loads(shown):
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                experiments[rev.get("name") or exp.get("name")] = data
    assert {"lr-01", "lr-003", "lr-03"} <= set(experiments), sorted(experiments)
    for name, lr in (("lr-01", 0.01), ("lr-003", 0.003), ("lr-03", 0.03)):
        data = experiments[name]
        assert data["params"]["params.yaml"]["data"]["optimizer"]["lr"] == lr
        assert "test_accuracy" in data["metrics"]["metrics/blobs-logit.json"]["data"], name

    # Every experiment's run landed in the project's store, even those run in DVC's temporary copies.
    runs = [r for r in finished_runs(f"sqlite:///{project / 'mlflow.db'}") if r.data.tags.get("dvc.exp_name")]
    assert sorted((r.data.tags["dvc.exp_name"], r.data.params["optimizer.lr"]) for r in runs) == [
        ("lr-003", "0.003"), ("lr-01", "0.01"), ("lr-03", "0.03")]
    assert all(r.info.status == "FINISHED" and "test_accuracy" in r.data.metrics for r in runs)
    baseline_rev = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert {r.data.tags.get("dvc.exp_baseline_rev") for r in runs} == {baseline_rev}
