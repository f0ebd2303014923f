"""The config's schema: params.yaml is conf/ composed, every key typed, every bad value one line."""

import importlib
import shutil

import pytest
from omegaconf import OmegaConf

from helpers import ROOT
from logitlab.data.dataset import dataset_of
from logitlab.errors import UserError
from logitlab.schema import Layout, Task, TrainerName, compose, flatten, load, params_drift, run_params


def test_params_yaml_agrees_with_conf():
    drift = params_drift(ROOT)
    assert drift == [], f"params.yaml disagrees with conf/ at {drift}: run `make params`"


def test_drift_is_detected(tmp_path):
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    assert params_drift(tmp_path) == []
    (tmp_path / "conf" / "optimizer" / "adam.yaml").write_text("name: adam\nlr: 0.01\n")
    assert params_drift(tmp_path) == ["optimizer.lr"]


def test_params_yaml_loads_through_the_schema_as_the_dvc_stages_load_it():
    cfg = load(OmegaConf.load(ROOT / "params.yaml"))
    assert cfg.task is Task.multiclass and cfg.trainer.name is TrainerName.fit and cfg.layout is Layout.job
    assert cfg.datasets["blobs"].num_classes == 4 and cfg.ds.name == "mnist" and cfg.ds.preprocess["scale"] == 255.0


def test_defaults_reproduce_the_reference():
    cfg = compose(ROOT)
    assert cfg.optimizer.lr == 0.001 and cfg.trainer.epochs == 10 and cfg.model.layers == [25, 15]
    blobs = dataset_of(cfg, "blobs")
    fetch = blobs.fetch_settings
    assert fetch.n_samples == 2000 and fetch.random_state == 30 and fetch.cluster_std == 1.0
    assert fetch.centers == [[-5, 2], [-2, -2], [1, 2], [5, -2]]
    assert blobs.preprocess_settings.test_size == 0.2
    assert [s["type"] for s in dataset_of(cfg, "mnist").fetch_settings.sources] == ["url", "pip_wheel", "file"]
    assert compose(ROOT, ["model=mlp_784_256"]).model.layers == [784, 256]


def test_batch_size_falls_back_to_the_dataset():
    assert compose(ROOT, ["dataset=mnist"]).batch_size == 64
    assert compose(ROOT, ["dataset=blobs"]).batch_size == 32
    assert compose(ROOT, ["dataset=blobs", "trainer.batch_size=7"]).batch_size == 7


@pytest.mark.parametrize(
    "override, message",
    [
        # refused by the types, at composition
        ("task=ternary", "task: Invalid value 'ternary', expected one of [multiclass, binary]"),
        ("precision=float16", "precision: Invalid value 'float16', expected one of "
                              "[float32, float64, mixed_float16, mixed_bfloat16]"),
        ("trainer.name=sgd_loop", "trainer.name: Invalid value 'sgd_loop', expected one of [fit, gradient_tape]"),
        ("model.activation=swishy", "model.activation: Invalid value 'swishy', expected one of "
                                    "[relu, sigmoid, tanh, gelu, linear]"),
        ("optimizer.lr=fast", "optimizer.lr: Value 'fast' of type 'str' could not be converted to Float"),
        ("trainer.epochs=2.5", "trainer.epochs: Value '2.5' of type 'float' could not be converted to Integer"),
        ("trainer.epochz=3", "unknown key 'trainer.epochz' in override 'trainer.epochz=3'; valid under trainer: "
                             "name, epochs, batch_size, validation_split, steps_per_execution, jit_compile, "
                             "shuffle_buffer, log_every_n_steps, max_loss, verbose"),
        ("+trainer.foo=1", "unknown key 'trainer.foo'; valid under trainer: name, epochs, batch_size"),
        ("+colour=red", "unknown key 'colour'; valid at the top level: datasets, heads, model, trainer"),
        # refused by the checks types cannot make
        ("dataset=cifar", "unknown dataset 'cifar'; valid: blobs, mnist"),
        ("model.head=tanh", "unknown model.head 'tanh' for task multiclass; valid: softmax, logit, softmax_strict, sigmoid"),
        ("trainer.steps_per_execution=0", "trainer.steps_per_execution must be a positive whole number, got 0"),
        ("trainer.epochs=0", "trainer.epochs must be a positive whole number, got 0"),
        ("trainer.jit_compile=sometimes", "trainer.jit_compile must be one of auto, true, false; got 'sometimes'"),
        ("trainer.jit_compile=1", "trainer.jit_compile must be one of auto, true, false; got 1"),
        ("trainer.epochs=-3", "trainer.epochs must be a positive whole number, got -3"),
        ("trainer.batch_size=0", "trainer.batch_size must be a positive whole number, got 0"),
        ("optimizer.lr=-0.1", "optimizer.lr must be a positive number, got -0.1"),
        ("optimizer.lr=0", "optimizer.lr must be a positive number, got 0.0"),
        ("trainer.validation_split=1.5", "trainer.validation_split must be a number in [0, 1), got 1.5"),
        ("model.layers=[25,-1]", "model.layers must be a list of positive unit counts, got [25, -1]"),
        ("report.digits=0", "report.digits must be a positive whole number, got 0"),
        ("evaluate.batch_size=0", "evaluate.batch_size must be a positive whole number, got 0"),
        ("tracking.retries=-1", "tracking.retries must be a whole number >= 0, got -1"),
    ],
)
def test_bad_settings_are_one_line_user_errors(override, message):
    with pytest.raises(UserError) as caught:
        compose(ROOT, [override])
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("datasets.blobs.preprocess.test_size=1.5", "datasets.blobs.preprocess.test_size must be a number in (0, 1), got 1.5"),
        ("datasets.blobs.preprocess.test_size=0", "datasets.blobs.preprocess.test_size must be a number in (0, 1), got 0"),
        ("datasets.blobs.preprocess.test_size=half", "datasets.blobs.preprocess.test_size: Value 'half' of type 'str' "
                                                     "could not be converted to Float"),
        ("datasets.blobs.fetch.n_samples=0", "datasets.blobs.fetch.n_samples must be a positive whole number, got 0"),
        ("datasets.mnist.preprocess.scale=0", "datasets.mnist.preprocess.scale must be a positive number, got 0"),
        ("+datasets.mnist.fetch.mirror=x", "unknown key 'datasets.mnist.fetch.mirror'; valid under datasets.mnist.fetch: "
                                           "sources, timeout_s, array_sha256"),
        ("datasets.blobs._target_=logitlab.data.blobs.Nope", "datasets.blobs: cannot find the class 'logitlab.data.blobs.Nope'"),
        ("datasets.blobs._target_=logitlab.model.heads.Head", "datasets.blobs: 'logitlab.model.heads.Head' is not a "
                                                               "logitlab.data.dataset.Dataset"),
    ],
)
def test_a_dataset_plugin_checks_its_own_settings_in_one_line(override, message):
    """A dataset's fetch and preprocess settings are typed and checked by its class, when a stage
    instantiates it (logitlab.data.dataset.dataset_of)."""
    name = override.lstrip("+").split(".")[1]
    cfg = compose(ROOT, [override])
    with pytest.raises(UserError) as caught:
        dataset_of(cfg, name)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_every_dataset_and_head_of_the_config_is_a_plugin_hydra_instantiates():
    from logitlab.data.dataset import Dataset
    from logitlab.model.heads import Head, head_of

    cfg = compose(ROOT)
    assert set(cfg.datasets) >= {"mnist", "blobs"} and set(cfg.heads) >= {"softmax", "logit"}
    for name in cfg.datasets:
        dataset = dataset_of(cfg, name)
        assert isinstance(dataset, Dataset) and dataset.name == name
        assert dataset.drawing().kind in ("image", "points", "none")
    for task in ("multiclass", "binary"):
        for name, spec in cfg.heads.items():
            if task in spec.tasks:
                head = head_of(compose(ROOT, [f"task={task}", f"model.head={name}"]))
                assert isinstance(head, Head) and head.name == name and head.from_logits == spec.from_logits


def test_a_head_must_fit_the_task():
    with pytest.raises(UserError, match="unknown model.head 'softmax' for task binary; valid: logit, sigmoid, sigmoid_strict"):
        compose(ROOT, ["task=binary", "model.head=softmax"])
    with pytest.raises(UserError, match=r"datasets.blobs.binary.positive_class must be in 0..3, got 7"):
        compose(ROOT, ["task=binary", "dataset=blobs", "datasets.blobs.binary.positive_class=7"])


def test_the_schema_is_in_force_when_dvc_composes_conf(tmp_path):
    """DVC's own composer (dvc exp run -S) runs in a process that never imports logitlab's apps: the
    hydra_plugins module registers the schema there, so a wrong type fails there too."""
    import subprocess

    from helpers import PYTHON

    script = ("from dvc.utils.hydra import compose_and_dump; import sys; "
              f"compose_and_dump(sys.argv[1], {str(ROOT / 'conf')!r}, None, 'config', '', sys.argv[2:])")
    ok = subprocess.run([PYTHON, "-c", script, str(tmp_path / "ok.yaml"), "optimizer.lr=0.01"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert OmegaConf.load(tmp_path / "ok.yaml").optimizer.lr == 0.01
    bad = subprocess.run([PYTHON, "-c", script, str(tmp_path / "bad.yaml"), "optimizer.lr=fast"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "could not be converted to Float" in bad.stderr
    assert not (tmp_path / "bad.yaml").exists()


def test_run_params_carry_only_the_chosen_dataset():
    params = run_params(compose(ROOT, ["dataset=blobs", "model.head=softmax"]))
    assert params["dataset.name"] == "blobs" and params["model.head"] == "softmax"
    assert params["dataset.fetch.centers"] == "[[-5, 2], [-2, -2], [1, 2], [5, -2]]"
    assert params["optimizer.lr"] == "0.001" and params["task"] == "multiclass" and params["layout"] == "job"
    assert not any(k.startswith("datasets.") for k in params)


@pytest.mark.parametrize("overrides", [
    [], ["dataset=blobs", "model.head=softmax", "precision=float64"],
    ["dataset=blobs", "task=binary", "model.head=sigmoid_strict", "trainer=gradient_tape", "trainer.batch_size=16"],
    ["precision=mixed_bfloat16", "optimizer.lr=1", "model.layers=[7]", "seed=3", "evaluate.split=train"],
])
def test_a_config_as_plain_data_is_what_omegaconf_makes_of_it(overrides):
    """run_params and the config hash walk the loaded config themselves: the same values of the
    same types as OmegaConf's own conversion (so hashes stay what they were), enums by name."""
    from logitlab.schema.flat import plain

    cfg = compose(ROOT, overrides)
    theirs = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)
    assert repr(plain(cfg)) == repr(theirs)
    assert flatten(cfg) == flatten(OmegaConf.create(theirs))


def test_flatten_nests_with_dots():
    assert flatten(OmegaConf.create({"a": {"b": 1, "c": [1, 2]}, "d": None})) == {"a.b": "1", "a.c": "[1, 2]", "d": "null"}


def test_variant_and_stage_name_the_non_default_task_and_trainer():
    cfg = compose(ROOT, [])
    assert (cfg.variant, cfg.stage) == ("mnist-logit", "train@mnist-logit")
    binary = compose(ROOT, ["dataset=blobs", "task=binary", "model.head=sigmoid_strict"])
    assert (binary.variant, binary.stage) == ("blobs-binary-sigmoid_strict", "train_binary@blobs-sigmoid_strict")
    tape = compose(ROOT, ["trainer=gradient_tape", "model.head=softmax"])
    assert (tape.variant, tape.stage) == ("mnist-softmax-gradient_tape", "train_tape@mnist-softmax")
    mixed = compose(ROOT, ["model.head=softmax", "precision=mixed_float16"])
    assert mixed.variant == "mnist-softmax-mixed_float16"
    assert tape.trainer.shuffle_buffer == 1024


def test_gradient_tape_settings_are_checked():
    with pytest.raises(UserError, match="trainer.shuffle_buffer must be a positive whole number, got 0"):
        compose(ROOT, ["trainer=gradient_tape", "trainer.shuffle_buffer=0"])


def test_paths_come_from_the_project_root_whatever_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose(ROOT, ["dataset=blobs"])
    assert cfg.path(ROOT, "processed") == ROOT / "data" / "processed" / "blobs.npz"
    assert compose(ROOT, [f"paths.models={tmp_path}"]).path(ROOT, "models") == tmp_path


def test_the_group_hash_is_the_config_without_its_seed():
    from logitlab.schema import config_hash, group_hash

    seeds = [compose(ROOT, ["dataset=blobs", f"seed={s}"]) for s in (0, 1)]
    assert group_hash(seeds[0]) == group_hash(seeds[1]) and config_hash(seeds[0]) != config_hash(seeds[1])
    other = compose(ROOT, ["dataset=blobs", "seed=0", "optimizer.lr=0.01"])
    assert group_hash(other) != group_hash(seeds[0]), "another learning rate is another group"
    assert group_hash(compose(ROOT, ["dataset=blobs", "seed=0", "trainer.verbose=0"])) == group_hash(seeds[0])


@pytest.mark.parametrize("overrides", [
    ["seed=3"], ["model.head=softmax", "precision=mixed_float16", "optimizer.lr=0.3"], ["model.layers=[7,5,3]"],
    ["trainer=gradient_tape", "seed=1"], ["dataset=blobs", "trainer.batch_size=7"], ["task=binary", "model.head=sigmoid"],
])
def test_a_config_of_a_shape_loaded_before_is_typed_as_merging_it_afresh_types_it(overrides, monkeypatch):
    """load() types a config by setting the values that differ on a copy of a recent config's typed
    node when both have the same keys (a sweep's jobs); the result is what OmegaConf's merge with the
    schema makes of the config alone."""
    from hydra import compose as hydra_compose, initialize_config_dir

    check = importlib.import_module("logitlab.schema.check")  # the module: the package exports its check()

    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        before, cfg = (hydra_compose("config", o) for o in (["seed=0"], overrides))
    monkeypatch.setattr(check, "_MERGED", [])
    alone = load(cfg)
    monkeypatch.setattr(check, "_MERGED", [])
    load(before)
    assert load(cfg) == alone
    assert len(check._MERGED) == 1, "typed from the first config's node, not merged again"


def test_a_value_refused_in_a_config_of_a_known_shape_is_the_error_merging_gives(monkeypatch):
    check = importlib.import_module("logitlab.schema.check")

    good = OmegaConf.load(ROOT / "params.yaml")  # plain YAML: the schema types it
    bad = OmegaConf.load(ROOT / "params.yaml")
    bad.trainer.epochs = "ten"
    monkeypatch.setattr(check, "_MERGED", [])
    with pytest.raises(UserError) as alone:
        load(bad)
    load(good)
    with pytest.raises(UserError) as after:
        load(bad)
    assert str(after.value) == str(alone.value) and "trainer.epochs" in str(alone.value)
