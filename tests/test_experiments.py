"""The reference notebooks as experiments (conf/experiment/): each composes to the notebook as
written, sweeps its heads with -m, and its runs print what the notebook printed, from their own
numbers."""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import ROOT, tiny_blobs, tiny_mnist
from logitlab.data.preprocess import load_processed, splits
from logitlab.files import load_arrays
from logitlab.schema import compose
from logitlab.stages.job import Job

# What each notebook does, as the course material states it (not read from conf/).
NOTEBOOKS = {
    "course_mnist": dict(dataset="mnist", task="multiclass", layers=[25, 15], activation="relu", trainer="fit",
                         epochs=100, batch=32, validation=0.0, train_on="train", split="test",
                         heads="softmax,logit"),
    "course_logistic": dict(dataset="mnist", task="binary", layers=[25, 15], activation="sigmoid", trainer="fit",
                            epochs=100, batch=32, validation=0.0, train_on="train", split="test",
                            heads="sigmoid,logit"),
    "blobs_softmax": dict(dataset="blobs", task="multiclass", layers=[25, 15], activation="relu", trainer="fit",
                          epochs=10, batch=32, validation=0.0, train_on="all", split="train", heads="softmax,logit"),
    "blobs_sigmoid": dict(dataset="blobs", task="multiclass", layers=[25, 15], activation="relu", trainer="fit",
                          epochs=10, batch=32, validation=0.0, train_on="all", split="train", heads="sigmoid,logit"),
    "mnist_gradient_tape": dict(dataset="mnist", task="multiclass", layers=[784, 256], activation="relu",
                                trainer="gradient_tape", epochs=1, batch=64, validation=0.0, train_on="train",
                                split="test", heads="logit,softmax"),
}


def sweep_params(name: str) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from logitlab.schema import register

    register()
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = hydra_compose("config", overrides=[f"experiment={name}"], return_hydra_config=True)
    return dict(cfg.hydra.sweeper.params)


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_each_reference_notebook_composes_as_written(name):
    want = NOTEBOOKS[name]
    cfg = compose(ROOT, [f"experiment={name}"])
    assert cfg.experiment == name and cfg.dataset == want["dataset"] and cfg.task == want["task"]
    assert cfg.model.layers == want["layers"] and cfg.model.activation == want["activation"]
    assert cfg.trainer.name == want["trainer"] and cfg.trainer.epochs == want["epochs"]
    assert cfg.batch_size == want["batch"] and cfg.trainer.validation_split == want["validation"]
    assert cfg.trainer.train_on == want["train_on"] and cfg.evaluate.split == want["split"]
    assert cfg.optimizer.lr == 0.001 and cfg.precision == "float32"  # Adam's default
    assert sweep_params(name) == {"model.head": want["heads"]}
    assert cfg.model.head == want["heads"].split(",")[0]
    if cfg.trainer.name == "gradient_tape":
        assert (cfg.trainer.shuffle_buffer, cfg.trainer.log_every_n_steps) == (1024, 100)


def test_the_numerics_study_sweeps_learning_rate_head_precision_and_seeds_on_both_datasets():
    params = sweep_params("numerics_study")
    rates = [float(v) for v in params["optimizer.lr"].split(",")]
    assert rates[0] <= 1e-3 and rates[-1] >= 0.3 and len(rates) >= 5
    assert np.allclose(np.diff(np.log(rates)), np.log(rates[1] / rates[0]), rtol=0.1), "log-spaced"
    assert set(params["model.head"].split(",")) == {"logit", "softmax", "softmax_strict"}
    assert set(params["precision"].split(",")) == {"float32", "mixed_float16", "mixed_bfloat16"}
    assert params["seed"] == "range(5)" and params["study"] == "blobs,mnist"
    blobs, mnist = (compose(ROOT, ["experiment=numerics_study", f"study={d}"]) for d in ("blobs", "mnist"))
    assert (blobs.dataset, blobs.trainer.epochs, mnist.dataset, mnist.trainer.epochs) == ("blobs", 10, "mnist", 3)
    assert mnist.model.layers == [25, 15] and blobs.tracking.experiment == "numerics_study"


def test_without_an_experiment_nothing_changes():
    assert compose(ROOT).experiment is None
    assert compose(ROOT, ["experiment=blobs_softmax", "optimizer.lr=0.01"]).optimizer.lr == 0.01, "overrides win"


def test_the_dvc_tape_stages_train_the_gradient_tape_notebook():
    """train_tape@ runs on params.yaml with pipeline.gradient_tape.overrides: the same run as
    experiment=mnist_gradient_tape."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    overrides = shlex.split(params["pipeline"]["gradient_tape"]["overrides"])
    stage = compose(ROOT, ["trainer.name=gradient_tape", "model.head=logit", *overrides])
    notebook = compose(ROOT, ["experiment=mnist_gradient_tape"])
    for key in ("dataset", "task", "model.layers", "model.activation", "model.head", "trainer.name", "trainer.epochs",
                "trainer.validation_split", "trainer.shuffle_buffer", "trainer.log_every_n_steps", "trainer.train_on",
                "optimizer.lr", "batch_size", "evaluate.split", "precision"):
        get = lambda c: eval(f"c.{key}")  # noqa: E731
        assert get(stage) == get(notebook), key
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train_tape"]
    assert dvc["cmd"].endswith("${pipeline.gradient_tape.overrides}")
    assert "pipeline.gradient_tape.overrides" in dvc["params"], "DVC reruns the stages when they change"


def test_training_on_all_puts_the_splits_back_in_the_fetched_order(tmp_path):
    tiny_blobs(tmp_path)
    raw = load_arrays(tmp_path / "raw" / "blobs.npz", ("x", "y"), remake="-")
    data = load_processed(tmp_path / "processed" / "blobs.npz", "blobs")
    assert not np.array_equal(data["x_train"], raw["x"][:len(data["x_train"])]), "the split shuffles"
    every = splits(data, "all", "train")
    np.testing.assert_array_equal(every["x_train"], raw["x"].astype(np.float32))
    np.testing.assert_array_equal(every["y_train"], raw["y"])
    assert every["x_eval"] is every["x_train"]
    held_out = splits(data, "train", "test")
    assert held_out["x_eval"] is data["x_test"] and held_out["x_train"] is data["x_train"]


def _run(tmp_path: Path, overrides: list[str]):
    import mlflow

    from logitlab.stages.train import train

    cfg = compose(ROOT, [*overrides, f"tracking.uri='sqlite:///{tmp_path / 'mlflow.db'}'", "trainer.verbose=0"])
    train(cfg, ROOT, Job(multirun=False, num=0, overrides=overrides, dir=tmp_path / "job", sweep_dir=tmp_path))
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("logitlab").experiment_id])
    return cfg, client, run


def _vector(text: str) -> np.ndarray:
    return np.array([float(v) for v in text.strip("[] ").split()])


@pytest.mark.slow
def test_a_blobs_notebook_run_fits_every_point_and_prints_as_the_notebook(tmp_path):
    data = tiny_blobs(tmp_path)  # 200 points
    cfg, client, run = _run(tmp_path, ["experiment=blobs_softmax", "model.head=logit", *data])
    assert run.data.params["trainer.train_on"] == "all" and run.data.params["experiment"] == "blobs_softmax"
    inputs = run.inputs.dataset_inputs  # trained and evaluated on one dataset: MLflow keeps it once
    assert {i.dataset.name for i in inputs} == {"blobs-all"}
    assert all('"features_shape": [200, 2]' in i.dataset.profile for i in inputs)
    assert {"notebook.txt", "outputs.npz", "outputs.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    from logitlab.schema import group_hash

    assert run.data.tags["logitlab.group"] == group_hash(cfg), "the seed-free config hash, for the UI's Group by"

    text = (tmp_path / "job" / "notebook.txt").read_text()
    assert text.startswith("# blobs_softmax: the logit head on blobs (multiclass), 200 train examples")
    with np.load(tmp_path / "job" / "outputs.npz") as npz:
        outputs, probs = npz["outputs"], npz["probabilities"]
    assert text.count("two example output vectors:") == 2 and "softmax of the logits" in text
    extremes = re.findall(r"largest value (\S+) smallest value (\S+)", text)
    assert [tuple(map(float, e)) for e in extremes] == [(outputs.max(), outputs.min()), (probs.max(), probs.min())]
    categories = re.findall(r"^(\[[^\]]+\]), category: (\d)$", text, flags=re.M)
    assert len(categories) == 5
    for i, (vector, category) in enumerate(categories):
        np.testing.assert_allclose(_vector(vector), outputs[i], rtol=1e-6)
        assert int(category) == outputs[i].argmax()
    raw = load_arrays(tmp_path / "raw" / "blobs.npz", ("x", "y"), remake="-")
    np.testing.assert_array_equal(np.load(tmp_path / "job" / "outputs.npz")["labels"], raw["y"]), "in fetched order"


@pytest.mark.slow
def test_the_gradient_tape_notebook_run_prints_its_step_log_and_test_digits(tmp_path):
    from PIL import Image

    data = tiny_mnist(tmp_path, n_train=200, n_test=50)
    cfg, client, run = _run(tmp_path, ["experiment=mnist_gradient_tape", "trainer.log_every_n_steps=2", *data])
    text = (tmp_path / "job" / "notebook.txt").read_text()
    # 200 examples in batches of 64: 4 steps, logged after steps 2 and 4.
    assert re.findall(r"at step (\d+): (\S+)\nSeen so far: (\d+) samples", text) == [
        (s, f"{h.value:.4f}", seen) for (s, seen), h in zip((("2", "128"), ("4", "200")),
                                                            client.get_metric_history(run.info.run_id, "step_loss"))]
    with np.load(tmp_path / "job" / "outputs.npz") as npz:
        outputs, labels = npz["outputs"], npz["labels"]
    np.testing.assert_allclose(_vector(re.search(r"logits_test\[0\]: (\[[^\]]+\])", text).group(1)), outputs[0],
                               rtol=1e-6)
    assert re.search(r"predicted: (\[.*\])", text).group(1) == str(outputs[:10].argmax(axis=1).tolist())
    assert re.search(r"labels: +(\[.*\])", text).group(1) == str(labels[:10].tolist())
    assert labels.shape == (50,), "evaluated on the test split"
    png = tmp_path / "job" / "notebook_digits.png"
    assert Image.open(png).size[0] > 300
    assert {"notebook.txt", "notebook_digits.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
