"""A real single-node SLURM cluster for the tests: munged, slurmdbd (accounting in a fresh MariaDB
database), slurmctld and slurmd, on this host, on free loopback ports, with every config file, socket,
spool and log in one temporary folder. The system's own SLURM and MUNGE settings are never read or
touched: the clients find this cluster through SLURM_CONF, MUNGE through the socket named in it.

Debian's slurm-wlm, slurmdbd and munge are installed if missing (root only: otherwise the tests
skip, saying why). Every daemon started here is stopped by its pid at the end, after every job on
the cluster is cancelled; the accounting database is dropped."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import accepts, ensure_debian, free_port, stop

PACKAGES = ["slurm-wlm", "slurmdbd", "munge"]
MUNGED, SLURMDBD = Path("/usr/sbin/munged"), Path("/usr/sbin/slurmdbd")
SLURMCTLD, SLURMD = Path("/usr/sbin/slurmctld"), Path("/usr/sbin/slurmd")
MUNGE_KEY = Path("/etc/munge/munge.key")
MARIADB = 3306


@dataclass
class Cluster:
    folder: Path
    name: str
    node: str
    partition: str
    conf: Path
    database: str
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """What a client (sbatch, squeue, sacct, scontrol, submitit) needs to reach this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), env={**os.environ, **self.env}, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}\n{self.logs()}")
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((self.folder / "log").glob("*")))

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.strip()

    def jobs(self) -> list[tuple[str, str]]:
        """(job id, state) of every job slurmctld still knows."""
        out = self.run("squeue", "-h", "-o", "%i %T", check=False).stdout.split("\n")
        return [tuple(line.split()) for line in out if line.strip()]


def _wait(what: str, ready, timeout: float, cluster: Cluster | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if cluster:
            dead = [n for n, p in cluster.procs.items() if p.poll() is not None]
            if dead:
                raise AssertionError(f"{', '.join(dead)} exited before {what}:\n{cluster.logs()}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}" + (f":\n{cluster.logs()}" if cluster else ""))


def _mariadb(sql: str) -> None:
    subprocess.run(["mariadb", "-h", "127.0.0.1", "-P", str(MARIADB), "-u", "root", "-e", sql], check=True,
                   capture_output=True, text=True, timeout=60)


def _configs(c: Cluster, ports: dict[str, int], munge_socket: Path) -> None:
    cpus = os.cpu_count() or 1
    mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
    d = c.folder
    common = ["AuthType=auth/munge", f"AuthInfo=socket={munge_socket}"]
    (d / "slurmdbd.conf").write_text("\n".join([
        *common, "DbdHost=localhost", "DbdAddr=127.0.0.1", f"DbdPort={ports['dbd']}", "SlurmUser=root",
        f"PidFile={d / 'state' / 'slurmdbd.pid'}", f"LogFile={d / 'log' / 'slurmdbd.log'}",
        "StorageType=accounting_storage/mysql", "StorageHost=127.0.0.1", f"StoragePort={MARIADB}", "StorageUser=root",
        f"StorageLoc={c.database}"]) + "\n")
    (d / "slurmdbd.conf").chmod(0o600)  # slurmdbd refuses a config others can read
    c.conf.write_text("\n".join([
        f"ClusterName={c.name}", f"SlurmctldHost={c.node}(127.0.0.1)", f"SlurmctldPort={ports['ctld']}",
        f"SlurmdPort={ports['d']}", "SlurmUser=root", "SlurmdUser=root", *common, "CredType=cred/munge",
        f"StateSaveLocation={d / 'state'}", f"SlurmdSpoolDir={d / 'spool'}",
        f"SlurmctldPidFile={d / 'state' / 'slurmctld.pid'}", f"SlurmdPidFile={d / 'state' / 'slurmd.pid'}",
        f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={d / 'log' / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory", "JobAcctGatherType=jobacct_gather/none", "JobCompType=jobcomp/none",
        "MpiDefault=none", "ReturnToService=2", "SchedulerType=sched/backfill",
        "AccountingStorageType=accounting_storage/slurmdbd", "AccountingStorageHost=localhost",
        f"AccountingStoragePort={ports['dbd']}",
        f"AccountingStoragePass={munge_socket}",  # the MUNGE socket for the slurmdbd connection
        f"NodeName={c.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN",
        f"PartitionName={c.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP"]) + "\n")


@contextlib.contextmanager
def slurm_cluster() -> Iterator[Cluster]:
    """Install (if missing) and start a one-node cluster; stop it afterwards."""
    if os.geteuid() != 0:
        pytest.skip("the SLURM cluster runs its daemons as root")
    ensure_debian(PACKAGES, [MUNGED, SLURMDBD, SLURMCTLD, SLURMD])
    if not MUNGE_KEY.exists():
        pytest.skip(f"{MUNGE_KEY} is missing (the munge package creates it)")
    if not accepts(MARIADB) or shutil.which("mariadb") is None:
        pytest.skip(f"MariaDB is not reachable on 127.0.0.1:{MARIADB}: slurmdbd keeps its accounting there")
    # Not pytest's tmp_path: munged, running as the munge user, must be able to reach its socket.
    folder = Path(tempfile.mkdtemp(prefix="logitlab-slurm-"))
    folder.chmod(0o755)
    for sub in ("state", "spool", "log", "munge"):
        (folder / sub).mkdir()
    shutil.chown(folder / "munge", "munge", "munge")
    tag = uuid.uuid4().hex[:8]
    cluster = Cluster(folder=folder, name=f"ll{tag}", node=socket.gethostname().split(".")[0], partition="debug",
                      conf=folder / "slurm.conf", database=f"slurm_acct_{tag}")
    ports = {"dbd": free_port(), "ctld": free_port(), "d": free_port()}
    munge_socket = folder / "munge" / "munge.sock"
    _configs(cluster, ports, munge_socket)
    env = {**os.environ, **cluster.env}
    logs = []

    def start(name: str, cmd: list[str], **kw) -> None:
        log = open(folder / "log" / f"{name}.out", "w")
        logs.append(log)
        cluster.procs[name] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, **kw)

    try:
        m = folder / "munge"
        start("munged", [str(MUNGED), "-F", f"--socket={munge_socket}", f"--key-file={MUNGE_KEY}",
                         f"--pid-file={m / 'munged.pid'}", f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'seed'}"],
              user="munge", group="munge")
        _wait("munged's socket", munge_socket.exists, 30, cluster)
        start("slurmdbd", [str(SLURMDBD), "-D"])
        _wait("slurmdbd", lambda: accepts(ports["dbd"]), 60, cluster)
        cluster.run("sacctmgr", "-i", "add", "cluster", cluster.name)
        start("slurmctld", [str(SLURMCTLD), "-D", "-i"])
        _wait("slurmctld", lambda: accepts(ports["ctld"]), 60, cluster)
        start("slurmd", [str(SLURMD), "-D", "-N", cluster.node])
        _wait("the node to be idle", lambda: cluster.node_state() == "idle", 90, cluster)
        yield cluster
    finally:
        if "slurmctld" in cluster.procs and cluster.procs["slurmctld"].poll() is None:
            cluster.run("scancel", "--full", "--user=root", check=False)
            with contextlib.suppress(AssertionError):
                _wait("every job to end", lambda: not cluster.jobs(), 60)
        for name in ("slurmd", "slurmctld", "slurmdbd", "munged"):
            if name in cluster.procs:
                stop(cluster.procs[name])
        for log in logs:
            log.close()
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            _mariadb(f"DROP DATABASE IF EXISTS {cluster.database}")
        shutil.rmtree(folder, ignore_errors=True)
