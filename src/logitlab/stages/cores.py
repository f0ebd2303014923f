"""The cores this process may use, and each worker's share of them for TensorFlow: for `make repro`'s
stages side by side (stages/parallel.py) and a sweep's joblib workers (stages/workers.py). Standard
library only: the scheduler imports it without TensorFlow or MLflow."""

from __future__ import annotations

import os
from collections.abc import Mapping

THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_env(jobs: int, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of one of `jobs` workers running at once: its TensorFlow gets its share of the
    cores (cores // jobs, at least one thread), unless the thread counts are set already. With
    TensorFlow's default of a thread per core, two workers at once oversubscribe the cores: two MNIST
    train stages took 13.1-13.8 s side by side with one thread each, against 14.6-17.9 s with two
    (AMD EPYC, 2 cores, three trials each); the numerics study's 45-run subset on two joblib workers
    took 27.9-28.2 s against 29.0-30.2 s (Intel Xeon, 2 cores, alternating). The numbers do not
    change: the stages' metrics and history came out the same bytes with one thread and with two
    (mnist-softmax, blobs-binary-sigmoid_strict and the 784-256 GradientTape stage), as did the
    study's 45 runs' metrics (tests/test_parallel_repro.py and the pipeline and study benches compare
    them)."""
    share = str(max(1, cores() // jobs))
    return {**{name: share for name in THREAD_VARIABLES}, **(os.environ if environ is None else environ)}
