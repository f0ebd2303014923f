"""Preprocessing: MNIST flattened and scaled, blobs split stratified; missing input names its stage."""

import numpy as np
import pytest

from helpers import mnist_arrays
from logitlab.data import blobs, mnist
from logitlab.data.preprocess import SPLITS, load_processed
from logitlab.files import save_arrays
from logitlab.errors import UserError


def test_mnist_is_flattened_and_scaled_to_unit_float32(tmp_path):
    arrays = mnist_arrays(n_train=30, n_test=10)
    save_arrays(tmp_path / "raw.npz", arrays)
    out = mnist.preprocess_mnist({"scale": 255.0}, tmp_path / "raw.npz")
    save_arrays(tmp_path / "p.npz", out)
    for split, n in (("train", 30), ("test", 10)):
        x = out[f"x_{split}"]
        assert x.shape == (n, 784) and x.dtype == np.float32
        assert 0.0 <= x.min() and x.max() <= 1.0
        np.testing.assert_allclose(x * 255, arrays[f"x_{split}"].reshape(n, 784), atol=1e-4)
        np.testing.assert_array_equal(out[f"y_{split}"], arrays[f"y_{split}"])
    assert sorted(load_processed(tmp_path / "p.npz", "mnist")) == sorted(SPLITS)


def _blobs(tmp_path, n=400):
    gen = {"n_samples": n, "centers": [[-5, 2], [-2, -2], [1, 2], [5, -2]], "cluster_std": 1.0, "random_state": 30}
    blobs.generate_blobs(gen, tmp_path / "raw.npz")
    return tmp_path / "raw.npz"


def test_blobs_split_is_stratified_and_seeded(tmp_path):
    raw = _blobs(tmp_path)
    split = {"test_size": 0.25, "random_state": 0}
    out = blobs.preprocess_blobs(split, raw)
    assert out["x_train"].shape == (300, 2) and out["x_test"].shape == (100, 2)
    assert out["x_train"].dtype == np.float32
    assert np.bincount(out["y_test"]).tolist() == [25, 25, 25, 25]
    again = blobs.preprocess_blobs(split, raw)
    np.testing.assert_array_equal(out["x_test"], again["x_test"])
    other = blobs.preprocess_blobs({"test_size": 0.25, "random_state": 1}, raw)
    assert not np.array_equal(out["x_test"], other["x_test"])


def test_missing_input_names_the_stage_to_run(tmp_path):
    with pytest.raises(UserError, match="run its stage first: dvc repro fetch@blobs"):
        blobs.preprocess_blobs({"test_size": 0.2, "random_state": 0}, tmp_path / "nope.npz")
    with pytest.raises(UserError, match="dvc repro preprocess@mnist"):
        load_processed(tmp_path / "nope.npz", "mnist")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing_array"])
def test_a_damaged_file_names_itself_and_the_command_that_remakes_it(tmp_path, damage):
    good = tmp_path / "good.npz"
    save_arrays(good, {k: np.zeros(4, np.float32) for k in SPLITS})
    bad = tmp_path / "p.npz"
    if damage == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif damage == "garbage":
        bad.write_bytes(b"not an npz file at all")
    else:
        save_arrays(bad, {"x_train": np.zeros(4, np.float32)})
    with pytest.raises(UserError) as caught:
        load_processed(bad, "mnist")
    message = str(caught.value)
    assert message.startswith(f"{bad} ") and message.endswith("remake it: dvc repro -f preprocess@mnist")
    assert "\n" not in message


def test_files_written_atomically_get_the_mode_open_would_give_them(tmp_path):
    import os
    import stat

    from logitlab.files import write_json

    mask = os.umask(0)
    os.umask(mask)
    path = write_json(tmp_path / "metrics.json", {"a": 1})
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, "not mkstemp's owner-only 0600"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"], "no temporary file left"


@pytest.mark.parametrize("damage, message", [
    (lambda a: a.pop("i_test"), "datasets.toy: preprocess returned no i_test; it must return x_train, y_train"),
    (lambda a: a.update(x_train=a["x_train"].astype(np.float64)), "datasets.toy: preprocess must return x_train as "
                                                                   "float32 (examples, features)"),
    (lambda a: a.update(y_test=np.array([0, 5])), "datasets.toy: labels of x_test span 0..5, beyond "
                                                   "datasets.toy.num_classes=3"),
    (lambda a: a.update(x_test=np.zeros((2, 4), np.float32)), "datasets.toy: x_train has 2 features, x_test 4"),
])
def test_a_plugin_whose_preprocess_returns_the_wrong_arrays_is_told_in_one_line(damage, message):
    from logitlab.data.preprocess import check_processed

    arrays = {"x_train": np.zeros((4, 2), np.float32), "y_train": np.array([0, 1, 2, 0]),
              "x_test": np.zeros((2, 2), np.float32), "y_test": np.array([1, 2]),
              "i_train": np.arange(4), "i_test": np.arange(4, 6)}
    check_processed(arrays, "toy", 3)  # as a plug-in should return them
    damage(arrays)
    with pytest.raises(UserError) as caught:
        check_processed(arrays, "toy", 3)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
