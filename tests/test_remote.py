"""Sharing through a real SSH remote on loopback: a fresh clone pulls the outputs and needs nothing else.

A throwaway `sshd` listens on 127.0.0.1 only, with its own host key, client key and config in a
temporary folder; the system's sshd configuration and any running sshd are never touched.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from helpers import (
    PYTHON,
    TINY_PIPELINE,
    accepts,
    copy_project,
    ensure_debian,
    free_port,
    history_files_drawn,
    run,
    shrink_to_tiny_data,
    subprocess_env,
)

SSHD = Path("/usr/sbin/sshd")
DVC = str(Path(PYTHON).parent / "dvc")
GIT = ["git", "-c", "user.name=logitlab-tests", "-c", "user.email=tests@logitlab.invalid"]


def variants() -> set[str]:
    """The variants the tiny pipeline trains (one metrics file and one history file each)."""
    p = TINY_PIPELINE
    return ({f"{d}-{h}" for d in p["datasets"] for h in p["heads"]}
            | {f"{d}-binary-{h}" for d in p["datasets"] for h in p["binary_heads"]}
            | {f"{d}-{h}-gradient_tape" for d in p["gradient_tape"]["datasets"] for h in p["gradient_tape"]["heads"]})


def ensure_sshd() -> None:
    """Install openssh-server if sshd is missing and we may; otherwise skip the module."""
    ensure_debian(["openssh-server"], [SSHD])


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A private sshd on 127.0.0.1:<free port>; yields (user, port, client private key)."""
    ensure_sshd()
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is missing")
    privsep = Path("/run/sshd")  # sshd refuses to start without its privilege-separation directory
    if not privsep.is_dir():
        if os.geteuid() != 0:
            pytest.skip(f"{privsep} is missing and creating it needs root")
        privsep.mkdir(mode=0o755, parents=True)

    home = tmp_path_factory.mktemp("sshd")
    host_key, client_key = home / "host_ed25519", home / "client_ed25519"
    for key, comment in ((host_key, "logitlab-test-host"), (client_key, "logitlab-tests")):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)], home)
    authorized = home / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    authorized.chmod(0o600)
    port = free_port()
    config = home / "sshd_config"
    config.write_text("\n".join([
        "ListenAddress 127.0.0.1",
        f"Port {port}",
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {authorized}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "StrictModes no",
        "UsePAM no",
        "UseDNS no",
        "PrintMotd no",
        "X11Forwarding no",
        "AllowTcpForwarding no",
        "AllowAgentForwarding no",
        f"PidFile {home / 'sshd.pid'}",
        "Subsystem sftp internal-sftp",
        "",
    ]))
    check = subprocess.run([str(SSHD), "-t", "-f", str(config)], check=False, capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, f"sshd rejects its test config:\n{check.stderr}"

    log = (home / "sshd.log").open("w")
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not accepts(port):
            if proc.poll() is not None:
                pytest.fail(f"sshd exited {proc.returncode}:\n{(home / 'sshd.log').read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"sshd did not listen on 127.0.0.1:{port} within 20 s:\n{(home / 'sshd.log').read_text()}")
            time.sleep(0.2)
        yield getpass.getuser(), port, client_key
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        log.close()


def add_remote(project: Path, url: str, key: Path, env: dict) -> None:
    """The team's SSH remote, default, in the project's local (untracked) DVC config.

    No option is needed against host-key prompts: dvc-ssh's config schema has none, and sshfs
    connects with `known_hosts=None` (no host-key check) unless told otherwise.
    """
    run([DVC, "remote", "add", "--local", "-d", "team", url], project, env)
    run([DVC, "remote", "modify", "--local", "team", "keyfile", str(key)], project, env)
    assert "team" in (project / ".dvc" / "config.local").read_text()


def cached_outputs(project: Path) -> dict[str, bytes]:
    """Every file of the cached outputs (data, models, report plots), by path relative to the project."""
    found = {}
    for top in ("data", "models", "report/plots"):
        for p in sorted((project / top).rglob("*")):
            if p.is_file():
                found[str(p.relative_to(project))] = p.read_bytes()
    return found


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_pipeline_shared_through_an_ssh_remote_stands_alone(tmp_path, sshd):
    user, port, key = sshd
    env = subprocess_env(DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(tmp_path / "dvc-site-cache"))
    storage = tmp_path / "storage"
    url = f"ssh://{user}@127.0.0.1:{port}{storage}"

    # a. The project, shrunk to tiny data, committed.
    project = copy_project(tmp_path / "a")
    shrink_to_tiny_data(project, tmp_path)
    run(["git", "init", "-q"], project)
    run(GIT + ["add", "-A"], project)
    run(GIT + ["commit", "-qm", "baseline"], project)

    # b. The pipeline runs once, here only.
    first = run([DVC, "repro"], project, env, timeout=1800)
    assert "Running stage" in first.stdout
    metrics_a = json.loads(run([DVC, "metrics", "show", "--json"], project, env).stdout)
    plots_a = json.loads(run([DVC, "plots", "show", "--json", "-o", str(tmp_path / "plots-a")], project, env).stdout)

    # c. Push to the SSH remote.
    add_remote(project, url, key, env)
    run([DVC, "push"], project, env, timeout=900)
    stored = [p for p in storage.rglob("*") if p.is_file()]
    assert stored, f"dvc push left nothing in {storage}"
    assert json.loads(run([DVC, "status", "--cloud", "--json"], project, env, timeout=300).stdout) == {}, \
        "the remote holds everything the cache does"

    # d. Commit what git should hold, clone it, pull the rest.
    run(GIT + ["add", "-A"], project)
    run(GIT + ["commit", "-qm", "pipeline outputs"], project)
    tracked = run(["git", "ls-files"], project).stdout.splitlines()
    assert "dvc.lock" in tracked
    assert not [f for f in tracked if f.startswith(("data/", "models/", "report/plots/", "mlartifacts/"))
                or f.endswith("mlflow.db")], "cached outputs and tracking stores stay out of git"
    clone = tmp_path / "b"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not list(clone.rglob("mlflow.db")) and not list(clone.rglob("mlartifacts"))
    assert cached_outputs(clone) == {}, "no cached output comes with the clone"
    assert not (clone / ".dvc" / "config.local").exists()
    add_remote(clone, url, key, env)
    run([DVC, "pull"], clone, env, timeout=900)
    originals = cached_outputs(project)
    assert originals
    assert cached_outputs(clone) == originals, "the pulled outputs are the pushed ones, bit for bit"

    # e. Nothing to run: the clone is complete without any tracking store.
    second = run([DVC, "repro"], clone, env, timeout=1800)
    assert "Running stage" not in second.stdout, second.stdout
    metrics_b = json.loads(run([DVC, "metrics", "show", "--json"], clone, env).stdout)
    files = next(iter(metrics_b.values()))["data"]
    assert {Path(f).stem for f in files} == variants(), sorted(files)
    assert metrics_b == metrics_a, "the same metrics as where they were made"
    plots_b = json.loads(run([DVC, "plots", "show", "--json", "-o", str(tmp_path / "plots-b")], clone, env).stdout)
    history_plots = sorted(p for p in plots_b["data"] if p.startswith(("loss_", "val_loss_")))
    drawn = history_files_drawn(plots_b["data"])
    assert drawn == {f"{v}.tsv" for v in variants()}, sorted(plots_b["data"])
    for p in history_plots:
        assert plots_b["data"][p] == plots_a["data"][p], p
    assert list(clone.rglob("mlflow.db")) == [], "no stage ran, so no tracking store was opened"
    assert list(clone.rglob("mlartifacts")) == []

    # f. The model itself, for one variant by name.
    model = Path("models") / "blobs-logit" / "model.keras"
    assert (clone / model).read_bytes() == (project / model).read_bytes()
