"""logitlab's benchmark: `make bench` (or `python benchmarks/bench.py`).

Every figure is a wall-clock time measured in this run, on this machine, side by side with its
baseline, and written to benchmarks/results.json. The protocol: the contenders of a row are timed in
TRIALS interleaved rounds after one warm-up round, the order rotated each round (A B C, B C A,
C A B, ...: no side always goes first); a row gives the median, min and max of each side and the
ratio of the medians (baseline over logitlab: above 1, logitlab is faster). Where the two [min, max]
ranges overlap, the row says "no difference", whatever its ratio.

- Training: seconds per steady epoch (every epoch of a trial after its first, which traces the
  graphs; each trial a fresh model) of logitlab's `fit` trainer against Keras `fit` tuned
  (steps_per_execution=32, and jit_compile on or off, whichever was faster on that model in one try
  each: the headline baseline) and against Keras `fit` with its defaults: the same model, data, batch
  size, seed and optimizer steps, test accuracy of each. FLOPs as TensorFlow executes them
  (`logitlab.train.fast_fit.training_flops`; tests/test_fast_fit.py checks them against TensorFlow's
  profiler), as fractions of two peaks measured here: a 2048x2048 float32 matmul, and the 784-256
  model's own matmul shapes (forward and backward, batch 64) in a tight graph loop, the attainable
  roofline.
- Tracking: a train job with its MLflow run against the same job without it (both draw the run's
  picture: evaluation output), the seconds added and the fraction; logging the model.
- Pictures: a run's outputs.png as a sweep's jobs draw it, on the figure the process keeps against
  a new figure each run, at MNIST's and blobs' test sizes.
- Sweep and load: 100 blobs jobs in one process (Hydra's basic launcher): the time a job, from the
  first job's run opening to the last one's closing over the jobs (target SWEEP_PER_JOB_TARGET_S),
  the wall clock with process start and exit against the sum of the jobs' training times, and where
  the rest goes; then, from
  the same sweep, each job's time (its run, opened to closed, and the wait before the next) around
  job 10 (jobs 6-15) against the last ten (91-100), and the process's resident memory after job 10
  and after job 100 (each run's rss_mb). Then the same jobs as a user writes them without logitlab
  (benchmarks/autolog_loop.py: Keras fit and evaluate in a loop with mlflow.keras.autolog, models not
  logged) against the sweep's wall clock, process start and exit included on both sides, and a job's
  time on each side as above, from the runs in each store (target: SWEEP_LOOP_TARGET x faster).
- Pipeline (`--only pipeline`, make bench-pipeline): `dvc repro` from nothing (the data fetched) in a
  copy of the project against the same in a copy of PIPELINE_BASELINE, then the no-op repro; and
  `make repro JOBS=2` (logitlab.stages.parallel, stages side by side) from nothing in another copy, against
  that serial `dvc repro` (`make repro JOBS=1`) and against PIPELINE_BASELINE's. PIPELINE_TRIALS
  rounds of the three, interleaved (one round had the JOBS=2 run 25% slower than the same run a few
  minutes later: the machine's noise): ~8 minutes a round here, so they have a make target of their
  own and `make bench` (the other parts) stays within 15 minutes. The sweep is one trial (~3.5 min).
- Study (`--only study`, make bench-pipeline too): the numerics study cut to STUDY_SUBSET (45 runs on
  the parallel launcher) in a copy of the project against the same in a copy of STUDY_BASELINE, two
  trials each interleaved, and whether each run's test loss and accuracy are the same on both sides.

Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = ROOT / "benchmarks" / "results.json"

TRIALS = 5                  # timed rounds per row, after one warm-up round
# (name, dataset, hidden layers, batch size, epochs per trial: the first traces, the rest are timed)
TRAINING = [  # the big model first: the small ones' peak fractions use the roofline measured beside it
    ("mnist 784-256-10, batch 64", "mnist", [784, 256], 64, 2),
    ("mnist 25-15-10, batch 32", "mnist", [25, 15], 32, 2),
    ("blobs 25-15-4, batch 32", "blobs", [25, 15], 32, 4),
]
BIG_MODEL = [784, 256]
SMALL_MODEL_RATIO = 1.5     # small models: at least this much faster than tuned Keras fit
BIG_MODEL_PEAK = 0.75       # 784-256: at least this fraction of the attainable peak
ACCURACY_POINTS = 0.5       # test accuracy below tuned Keras fit's allowed, in percentage points
# (name, overrides, the largest overhead allowed as a fraction of the untracked job or None, rounds at
# least): the machine's drift moves a ~0.3 s blobs job by tens of ms and a ~4 s MNIST job by ~10%,
# more than the targets' margins, so these rows take more rounds than --trials (~30 s and ~90 s)
TRACKING = [
    ("blobs 25-15-4, 10 epochs", ["dataset=blobs"], None, 30),
    ("mnist 25-15-10, batch 64, 10 epochs", ["dataset=mnist"], 0.03, 10),
]
TRACKING_ADDED_S = 0.1      # what tracking adds to any run, at most (issue #23)
MODEL_LOGGING_TARGET = 0.05  # logging a variant's MLflow model, as a fraction of its tracked run (issue #11)
MODEL_LOGGING_TRIALS = 7
SWEEP_JOBS = 100
SWEEP_PER_JOB_TARGET_S = 0.6  # the sweep's time a job, the first job's start to the last's end (issue #23)
SWEEP_LOOP_TARGET = 3.0     # the autolog loop's time a job over the sweep's, at least (issue #23)
LOAD_EARLY, LOAD_LATE = range(6, 16), range(91, 101)  # jobs (counted from 1) around job 10, and the last ten
LOAD_TIME_TARGET = 1.2      # the late jobs' median time over the early ones'
LOAD_MEMORY_TARGET = 0.2    # resident memory after job 100 over after job 10, less 1
# The pipeline before one stage per variant (train and evaluate in two processes, 35 stages).
PIPELINE_BASELINE = "8fc7770"
PIPELINE_TARGET = 2.0       # the baseline's repro from nothing over ours
PARALLEL_BASELINE_TARGET = 3.0  # the baseline's repro from nothing over make repro JOBS=2's (issue #23)
NOOP_REPRO_TARGET_S = 5.0
PARALLEL_JOBS = 2           # make repro JOBS=2 against JOBS=1 (issue #23)
PIPELINE_TRIALS = 2         # rounds of the three repros from nothing, interleaved (~8 min a round here)
RUN_FIGURE_TARGET_S = 0.1   # a run's picture after the sweep's first (issue #24)
# The numerics study (conf/experiment/numerics_study.yaml) cut to one learning rate on blobs: 3 heads x
# 3 precisions x 5 seeds, 45 runs on the parallel launcher as the README runs it, against the main
# that took 27 minutes over its 540 runs (issue #23).
STUDY_BASELINE = "996da51"
STUDY_SUBSET = ("study=blobs", "optimizer.lr=0.01")
STUDY_TARGET = 2.0          # the baseline's time over ours, at least
STUDY_TRIALS = 2            # each side ~1-3 min a trial here
PARALLEL_TARGET = 0.6       # JOBS=2's repro from nothing over JOBS=1's, at most


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the protocol


def interleaved(contenders: dict[str, Callable[[], float]], trials: int) -> dict[str, list[float]]:
    """Each contender's seconds in `trials` rounds after one warm-up round, the order rotated each round."""
    names = list(contenders)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(1 + trials):
        first = round_ % len(names)
        for name in names[first:] + names[:first]:
            seconds = contenders[name]()
            if round_:
                samples[name].append(seconds)
    return samples


def verdict(ours: list[float], baseline: list[float]) -> str:
    """'no difference' where the [min, max] ranges overlap; else which side is faster."""
    if max(ours) < min(baseline):
        return "logitlab faster"
    if max(baseline) < min(ours):
        return "baseline faster"
    return "no difference"


def compare(name: str, ours: list[float], baseline: list[float] | None, **extra: Any) -> dict[str, Any]:
    """A row of the table: the medians, spreads and ratio of two sets of trials (baseline None: ours alone)."""
    base = baseline or []
    row = {"name": name, "logitlab_s": statistics.median(ours),
           "baseline_s": statistics.median(base) if base else None, "ratio": None,
           "trials": min(len(ours), len(base)) if base else len(ours),
           "logitlab_min_s": min(ours), "logitlab_max_s": max(ours),
           "baseline_min_s": min(base) if base else None, "baseline_max_s": max(base) if base else None,
           "verdict": verdict(ours, base) if base else None, "gflop": None, "peak_fraction": None}
    if base:
        row["ratio"] = row["baseline_s"] / row["logitlab_s"]
    row.update(extra)
    return row


def paired(ours: list[float], baseline: list[float]) -> dict[str, float]:
    """What ours adds to the baseline, round by round: the median, min and max of each round's
    difference, and the median of each round's fraction. A round's two jobs run back to back, so the
    machine's drift, which moves both, cancels within it; the medians' difference mixes rounds."""
    added = [mine - theirs for mine, theirs in zip(ours, baseline)]
    return {"added_s": statistics.median(added), "added_min_s": min(added), "added_max_s": max(added),
            "overhead_fraction": statistics.median(mine / theirs - 1 for mine, theirs in zip(ours, baseline))}


def rounds(ours: list[float], baseline: list[float]) -> list[dict[str, float]]:
    """Each round's two times and their ratio, in the order run: for the parts of a few long rounds,
    where the machine's speed can drift between rounds (it did by 1.5x in one run here), the ratio
    within a round is the one to trust."""
    return [{"logitlab_s": mine, "baseline_s": theirs, "ratio": theirs / mine} for mine, theirs in zip(ours, baseline)]


# --------------------------------------------------------------------------- the machine's peaks


def _best_rate(run: Callable[[], Any], flops: float, seconds: float = 1.0, rounds: int = 3) -> float:
    """FLOP/s of `run` (which does `flops` and returns a tensor): the best of `rounds` rounds of
    back-to-back calls for about `seconds` each, after one call to warm up."""
    run().numpy()
    best = 0.0
    for _ in range(rounds):
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            out = run()
            calls += 1
        out.numpy()
        best = max(best, calls * flops / (time.perf_counter() - start))
    return best


def matmul_peak(n: int = 2048) -> float:
    """FLOP/s of n x n float32 matmuls through TensorFlow, all cores."""
    import tensorflow as tf

    a, b = tf.random.normal((n, n)), tf.random.normal((n, n))
    return _best_rate(lambda: tf.linalg.matmul(a, b), 2.0 * n ** 3)


def roofline(model, batch: int) -> tuple[Callable[[int], Any], int]:
    """The matmuls of a training step of `model`'s Dense layers at `batch` (forward, kernel gradients,
    input gradients but the first layer's: as TensorFlow runs them) and nothing else: `run(steps)`
    does `steps` of them in a tf.range loop of one graph call, each step doing `flops` (the count
    the trainer rows use, `training_flops`). Each step feeds a scalar of its results into the next
    step's input (a loop-invariant product could be hoisted out of the loop, an unused one pruned).
    Its rate is the attainable peak of those shapes."""
    import keras
    import tensorflow as tf

    from logitlab.train.fast_fit import training_flops

    shapes = [tuple(layer.kernel.shape) for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    kernels = [tf.random.normal((a, b), stddev=a ** -0.5) for a, b in shapes]
    x0 = tf.random.normal((batch, shapes[0][0]))

    @tf.function
    def run(steps: tf.Tensor) -> tf.Tensor:
        x = x0
        for _ in tf.range(steps):
            acts = [x]
            for w in kernels:                                  # forward
                acts.append(tf.linalg.matmul(acts[-1], w))
            grad, total = acts[-1], tf.constant(0.0)
            for i in reversed(range(len(kernels))):
                kernel_grad = tf.linalg.matmul(acts[i], grad, transpose_a=True)  # kernel gradient
                total += tf.reduce_sum(kernel_grad[0])
                if i:                                          # input gradient, not for the data
                    grad = tf.linalg.matmul(grad, kernels[i], transpose_b=True)
            x = x0 + 1e-30 * tf.tanh(total)
        return x

    return (lambda steps: run(tf.constant(steps))), training_flops(model) * batch


def model_shapes_peak() -> float:
    """The roofline of the 784-256 model at batch 64, before the trials (they time it again beside the trainers)."""
    from logitlab.model.build import build_model

    run, flops = roofline(build_model(784, 10, BIG_MODEL, logit_head()), 64)
    return _best_rate(lambda: run(100), 100.0 * flops)


# --------------------------------------------------------------------------- training throughput


def compose(overrides: list[str]):
    from logitlab.schema import compose as compose_config

    return compose_config(ROOT, overrides)


@functools.cache
def logit_head():
    """The configured `logit` head (logitlab.model.heads.Head)."""
    from logitlab.model.heads import head_of

    return head_of(compose(["model.head=logit"]))


def processed(dataset: str):
    from logitlab.data.preprocess import load_processed

    return load_processed(ROOT / "data" / "processed" / f"{dataset}.npz", dataset)


def prepared(cfg, data=None):
    """The compiled, seeded model of `cfg` and its training data, as the train stage makes them
    (from `data`, or the processed file read once)."""
    from logitlab.model.heads import head_of
    from logitlab.train.loop import prepare

    data = processed(cfg.dataset) if data is None else data
    return (*prepare(cfg, head_of(cfg), data), data)


class EpochClock:
    """When each epoch ended: a Keras callback for `model.fit`, and the metrics sink logitlab's trainer
    reports each epoch to (its `metrics` argument), so both are timed at the same point."""

    def __init__(self) -> None:
        import keras

        clock = self

        class Callback(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                clock.ends.append(time.perf_counter())

        self.callback = Callback()
        self.start = time.perf_counter()
        self.ends: list[float] = []

    def log(self, logs: dict, step: int = 0) -> None:
        if "loss" in logs:  # an epoch's metrics (the GradientTape loop also sends its step_ metrics)
            self.ends.append(time.perf_counter())

    def steady_epoch(self) -> float:
        """The median of the epochs after the first (which traces the graphs)."""
        marks = [self.start, *self.ends]
        return statistics.median(b - a for a, b in zip(marks[1:], marks[2:]))

    def first_epoch(self) -> float:
        return self.ends[0] - self.start


def test_accuracy(model, dataset: str) -> float:
    data = processed(dataset)
    return float(model.evaluate(data["x_test"], data["y_test"], batch_size=1024, verbose=0, return_dict=True)["accuracy"])


def train_config(dataset: str, layers: list[int], batch: int, epochs: int, *extra: str):
    return compose([f"dataset={dataset}", f"model.layers=[{','.join(map(str, layers))}]",
                    f"trainer.batch_size={batch}", f"trainer.epochs={epochs}", "trainer.verbose=0", *extra])


def keras_fit(cfg, data=None, **compile_args: Any) -> tuple[EpochClock, Any]:
    """Keras: the same model and seed as logitlab's (train.loop.prepare), compiled with Keras's defaults
    (plus `compile_args`), `model.fit` on the same arrays, batch size and validation split."""
    import keras

    from logitlab.model.heads import head_of

    model, x, y, _ = prepared(cfg, data)
    head, task = head_of(cfg), str(cfg.task)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=cfg.optimizer.lr),
                  loss=head.loss(task), metrics=[head.accuracy(task)], **compile_args)
    clock = EpochClock()
    model.fit(x, y, batch_size=cfg.trainer.batch_size, epochs=cfg.trainer.epochs,
              validation_split=cfg.trainer.validation_split, verbose=0, callbacks=[clock.callback])
    return clock, model


def logitlab_fit(cfg, data=None) -> tuple[EpochClock, Any]:
    """logitlab's trainer of `cfg` (the train stage's: `fit`, or the GradientTape loop), the clock as
    its metrics sink."""
    from logitlab.model.heads import head_of
    from logitlab.stages.train import trainer_for

    model, x, y, _ = prepared(cfg, data)
    clock = EpochClock()
    trainer_for(cfg, head_of(cfg), [])(model, x, y, cfg, clock)
    return clock, model


def _seconds_of(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run().numpy()
    return time.perf_counter() - start


def epoch_flops(model, n: int, validation_split: float) -> float:
    """An epoch's FLOPs: a training step for each training example, a forward pass for each validation one."""
    from logitlab.train.fast_fit import dense_flops, training_examples, training_flops

    n_train = training_examples(n, validation_split)
    return training_flops(model) * n_train + dense_flops(model) * (n - n_train)


def training(peaks: dict[str, float], trials: int) -> list[dict[str, Any]]:
    rows = []
    for name, dataset, layers, batch, epochs in TRAINING:
        cfg = train_config(dataset, layers, batch, epochs)
        log(f"training: {name}: Keras fit tuned, jit_compile off and on, one try each ...")
        probe = {jit: keras_fit(cfg, steps_per_execution=32, jit_compile=jit)[0].steady_epoch() for jit in (False, True)}
        jit = min(probe, key=probe.get)
        runs: dict[str, tuple[EpochClock, Any]] = {}

        def timed(key: str, run: Callable[[], tuple[EpochClock, Any]]) -> Callable[[], float]:
            def trial() -> float:
                runs[key] = run()
                return runs[key][0].steady_epoch()
            return trial

        contenders = {"logitlab": timed("logitlab", lambda: logitlab_fit(cfg)),
                      "tuned": timed("tuned", lambda: keras_fit(cfg, steps_per_execution=32, jit_compile=jit)),
                      "default": timed("default", lambda: keras_fit(cfg))}
        model = prepared(cfg)[0]
        flops = epoch_flops(model, len(processed(dataset)["y_train"]), cfg.trainer.validation_split)
        if layers == BIG_MODEL:  # the roofline, timed beside the trainers: an epoch's FLOPs in matmuls alone
            run, step_flops = roofline(model, batch)
            contenders["roofline"] = lambda: _seconds_of(lambda: run(round(flops / step_flops)))
        log(f"training: {name}: {', '.join(contenders)} (Keras tuned: jit_compile={jit}); "
            f"{trials} rounds of {epochs} epochs after a warm-up ...")
        samples = interleaved(contenders, trials)
        if "roofline" in samples:
            peaks["attainable"] = flops / statistics.median(samples["roofline"])
            peaks["attainable_min"], peaks["attainable_max"] = (flops / max(samples["roofline"]),
                                                                flops / min(samples["roofline"]))
        accuracy = {key: test_accuracy(model, dataset) for key, (_, model) in runs.items()}
        steps = {key: int(model.optimizer.iterations) for key, (_, model) in runs.items()}
        ours = statistics.median(samples["logitlab"])
        for baseline, label in (("tuned", f"Keras fit tuned (steps_per_execution=32, jit_compile={jit})"),
                                ("default", "Keras fit, default settings")):
            base = statistics.median(samples[baseline])
            row = compare(f"training s/epoch: {name}, against {label}", samples["logitlab"], samples[baseline],
                          gflop=flops / 1e9, peak_fraction=flops / ours / peaks["attainable"],
                          matmul_peak_fraction=flops / ours / peaks["matmul"],
                          baseline_peak_fraction=flops / base / peaks["attainable"],
                          first_epoch_s=runs["logitlab"][0].first_epoch(),
                          baseline_first_epoch_s=runs[baseline][0].first_epoch(),
                          epochs_per_trial=epochs, test_accuracy=accuracy["logitlab"],
                          baseline_test_accuracy=accuracy[baseline],
                          accuracy_points=(accuracy["logitlab"] - accuracy[baseline]) * 100,
                          optimizer_steps=steps["logitlab"], baseline_optimizer_steps=steps[baseline])
            if "roofline" in samples:
                roof = samples["roofline"]
                row.update(roofline_s=statistics.median(roof), roofline_min_s=min(roof), roofline_max_s=max(roof))
            if baseline == "tuned":
                row["tuned_jit_probe_s"] = {str(k).lower(): v for k, v in probe.items()}
                fair = row["accuracy_points"] >= -ACCURACY_POINTS and row["optimizer_steps"] == row["baseline_optimizer_steps"]
                if layers == BIG_MODEL:
                    row["target"] = f">= {BIG_MODEL_PEAK:.0%} of the attainable peak, accuracy, same steps"
                    row["met"] = row["peak_fraction"] >= BIG_MODEL_PEAK and fair
                else:
                    row["target"] = f">= {SMALL_MODEL_RATIO}x tuned Keras, accuracy, same steps"
                    row["met"] = (row["ratio"] >= SMALL_MODEL_RATIO and row["verdict"] == "logitlab faster" and fair)
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- tracking and sweeps


def tracking_overhead(store: Path, trials: int) -> list[dict[str, Any]]:
    """The same train job (data, model, fit, evaluation, the variant's files and picture) with and
    without its MLflow run; the store exists beforehand, as it does after a project's first run. The
    picture is evaluation output, drawn on both sides (issue #23). What tracking adds is the median
    of the rounds' differences (`paired`)."""
    from logitlab.data.dataset import dataset_of
    from logitlab.data.preprocess import load_processed, splits, task_labels
    from logitlab.evaluate.metrics import evaluate
    from logitlab.model.heads import head_of
    from logitlab.evaluate.printout import write_printout
    from logitlab.report.run_figure import FIGURE_FILE, draw_run_figure
    from logitlab.stages.job import Job
    from logitlab.tracking.runs import open_store
    from logitlab.stages.train import Files, train, trainer_for, write_outputs

    rows, mnist_run = [], None
    for name, overrides, target, at_least in TRACKING:
        cfg = compose([*overrides, "trainer.verbose=0", f"tracking.uri=sqlite:///{store / 'mlflow.db'}"])
        open_store(cfg.tracking, ROOT, "the benchmark")
        job_dir = store / "runs" / cfg.dataset
        job = Job(multirun=False, num=0, overrides=[], dir=job_dir, sweep_dir=job_dir)

        def untracked() -> float:  # as `train` does, less the run: the processed file read, ...
            start = time.perf_counter()
            data = splits(load_processed(cfg.path(ROOT, "processed"), cfg.dataset), cfg.trainer.train_on,
                          cfg.evaluate.split)
            model, x, y, _ = prepared(cfg, data)
            steps: list[Any] = []
            head = head_of(cfg)
            history = trainer_for(cfg, head, steps)(model, x, y, cfg, None)
            y_eval = task_labels(data["y_eval"], cfg.task, cfg.ds.binary.positive_class)
            result = evaluate(model, data["x_eval"], y_eval, str(cfg.task), head, cfg.evaluate.batch_size,
                              cfg.evaluate.n_examples)
            files = Files.of(cfg, ROOT, job_dir)
            write_outputs(files, model, history, result, {"examples": result.examples})
            write_printout(files.model_dir, result, data["x_eval"], cfg, head, steps, dataset_of(cfg).drawing())
            draw_run_figure(files.model_dir / FIGURE_FILE, result.outputs, result.probabilities, result.labels,
                            str(cfg.task), head.from_logits, f"{cfg.variant}: {head.name} head", history)
            return time.perf_counter() - start

        def tracked() -> float:
            start = time.perf_counter()
            train(cfg, ROOT, job)
            return time.perf_counter() - start

        n = max(trials, at_least)
        log(f"tracking overhead: {name}: {n} rounds after a warm-up ...")
        samples = interleaved({"tracked": tracked, "untracked": untracked}, n)
        limits = [f"<= {TRACKING_ADDED_S} s added"] + ([f"<= {target:.0%}"] if target is not None else [])
        row = compare(f"tracking overhead: {name}, against the same job untracked", samples["tracked"],
                      samples["untracked"], target=", ".join(limits))
        row.update(paired(samples["tracked"], samples["untracked"]))
        row["met"] = row["added_s"] <= TRACKING_ADDED_S and (target is None or row["overhead_fraction"] <= target)
        rows.append(row)
        if cfg.dataset == "mnist":
            mnist_run = row["logitlab_s"]
    if mnist_run is not None:
        rows.append(model_logging(mnist_run))
    return rows


def model_logging(mnist_run_s: float) -> dict[str, Any]:
    """`log_model` of the MNIST 25-15 model, as every train job calls it (the logged model with its
    signature and input example, linked to the run), against that job's whole tracked run."""
    import mlflow

    from logitlab.serving.pyfunc import log_model

    cfg = compose(["dataset=mnist", "trainer.verbose=0"])
    model, _, _, data = prepared(cfg)
    times = []
    with mlflow.start_run(run_name="bench-model-logging"):
        for _ in range(MODEL_LOGGING_TRIALS + 1):  # the first call imports MLflow's model code: a warm-up
            start = time.perf_counter()
            log_model(model, name="bench", task="multiclass", head=logit_head(), n_classes=10, example=data["x_test"],
                      tags={}, params={}, step=0)
            times.append(time.perf_counter() - start)
    row = compare("tracking overhead: logging the MNIST 25-15 model, against its tracked run", times[1:], None,
                  run_s=mnist_run_s, target=f"<= {MODEL_LOGGING_TARGET:.0%} of the run")
    row["overhead_fraction"] = row["logitlab_s"] / mnist_run_s
    row["met"] = row["overhead_fraction"] <= MODEL_LOGGING_TARGET
    return row


def pictures(trials: int) -> list[dict[str, Any]]:
    """A run's own picture (outputs.png) as a sweep's jobs draw it, one after another in one process:
    on the figure the process keeps, against a new figure each time (how it was drawn before, and
    what plotting code usually does), on MNIST's and blobs' test sizes (10 epochs of curves).
    Logits drawn from a normal distribution stand in for a model's: the cost is the figure's."""
    import numpy as np

    from logitlab.report import run_figure

    rows = []
    for name, n, k in (("mnist test set, 10000 x 10", 10_000, 10), ("blobs test set, 400 x 4", 400, 4)):
        rng = np.random.default_rng(0)
        outputs = rng.normal(0, 20, size=(n, k)).astype(np.float32)
        e = np.exp(outputs - outputs.max(1, keepdims=True))
        probs, labels = (e / e.sum(1, keepdims=True)).astype(np.float32), rng.integers(0, k, n)
        history = [{"loss": 1 / (i + 1), "val_loss": 1.2 / (i + 1)} for i in range(10)]
        with tempfile.TemporaryDirectory(prefix="logitlab-bench-pictures-") as tmp:
            def draw(new_figure: bool) -> float:
                if new_figure:
                    run_figure._FIGURES.clear()
                start = time.perf_counter()
                run_figure.draw_run_figure(Path(tmp) / "outputs.png", outputs, probs, labels, "multiclass", True,
                                           "bench (fit, float32, seed 0)", history)
                return time.perf_counter() - start

            draw(False)  # matplotlib imported and its fonts found: a sweep's first picture pays that once
            samples = interleaved({"kept": functools.partial(draw, False), "new": functools.partial(draw, True)},
                                  trials * 4)
        row = compare(f"pictures: a run's outputs.png after the first, {name}, against a new figure each run",
                      samples["kept"], samples["new"], target=f"<= {RUN_FIGURE_TARGET_S} s")
        row["met"] = row["logitlab_s"] <= RUN_FIGURE_TARGET_S
        rows.append(row)
    return rows


def sweep(store: Path) -> list[dict[str, Any]]:
    """`python pipelines/train.py -m` over SWEEP_JOBS blobs jobs (one per seed) with Hydra's in-process
    launcher: the wall clock, process start and exit included, against the sum of the jobs' training
    times, and where the rest went (from the runs' own start and end times)."""
    import mlflow

    from logitlab.tracking.runs import open_store

    uri = f"sqlite:///{store / 'mlflow.db'}"
    open_store(compose([f"tracking.uri={uri}"]).tracking, ROOT, "the benchmark")  # the store exists
    cmd = [sys.executable, "pipelines/train.py", "-m", "dataset=blobs", f"seed=range(0,{SWEEP_JOBS})",
           "trainer.verbose=0", f"hydra.sweep.dir={store / 'multirun'}", f"tracking.uri={uri}"]
    log(f"sweep: {SWEEP_JOBS} blobs jobs in one process ...")
    started, start = time.time(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"the sweep failed:\n{proc.stderr[-3000:]}")
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("logitlab")
    parent = client.search_runs([experiment.experiment_id], "tags.`logitlab.kind` = 'sweep'",
                                order_by=["attributes.start_time DESC"], max_results=1)[0]
    jobs = sorted(client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                                     max_results=1000), key=lambda r: r.info.start_time)
    training = [r.data.metrics["train_seconds"] for r in jobs]
    per_job = span_per_job(jobs)
    in_run = [(r.info.end_time - r.info.start_time) / 1000 - t for r, t in zip(jobs, training)]
    between = [(b.info.start_time - a.info.end_time) / 1000 for a, b in zip(jobs, jobs[1:])]
    row = compare(f"sweep: {len(jobs)} blobs jobs in one process, wall clock against the sum of their training; "
                  "time a job from the first job's start to the last one's end",
                  [wall], [sum(training)], jobs=len(jobs), processes=len({r.data.tags.get("logitlab.pid") for r in jobs}),
                  per_job_s=per_job, wall_over_training=wall / sum(training),
                  training_per_job_s=statistics.median(training),
                  in_run_overhead_per_job_s=statistics.median(in_run),
                  between_jobs_s=statistics.median(between) if between else 0.0,
                  start_s=jobs[0].info.start_time / 1000 - started,
                  exit_s=started + wall - jobs[-1].info.end_time / 1000,
                  target=f"<= {SWEEP_PER_JOB_TARGET_S} s a job")
    row["verdict"] = None  # one process against its own jobs' training: no contest
    row["met"] = per_job <= SWEEP_PER_JOB_TARGET_S and row["processes"] == 1
    return [row, load(jobs), autolog_loop(store, wall, per_job, len(jobs))]


def span_per_job(runs: list[Any]) -> float:
    """Seconds a job, from the first run's start to the last one's end (runs in start order)."""
    return (runs[-1].info.end_time - runs[0].info.start_time) / 1000 / len(runs)


def autolog_loop(store: Path, sweep_wall_s: float, sweep_per_job_s: float, jobs: int) -> dict[str, Any]:
    """The same jobs as a user writes them without logitlab (benchmarks/autolog_loop.py: a loop over
    Keras fit and evaluate with mlflow.keras.autolog(log_models=False)), process start to exit,
    against the sweep's wall clock; and a job's time on each side, the first run's start to the last
    one's end over the jobs (from the runs in each store). One trial each, as the sweep's."""
    import mlflow

    log(f"sweep baseline: {jobs} jobs in a plain Keras loop with mlflow.keras.autolog ...")
    uri = f"sqlite:///{store / 'autolog.db'}"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "autolog_loop.py"), "--jobs", str(jobs), "--store", uri]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"the autolog loop failed:\n{proc.stderr[-3000:]}")
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("autolog-loop")
    runs = sorted(client.search_runs([experiment.experiment_id], max_results=1000), key=lambda r: r.info.start_time)
    per_job = span_per_job(runs)
    row = compare(f"sweep: the {jobs} blobs jobs, logitlab's sweep (it also logs each model, its datasets and "
                  "numerics) against a plain Keras loop with mlflow.keras.autolog(log_models=False); a job's time "
                  "on each side", [sweep_wall_s], [seconds], jobs=jobs, per_job_s=sweep_per_job_s,
                  baseline_per_job_s=per_job, per_job_ratio=per_job / sweep_per_job_s,
                  target=f"per job >= {SWEEP_LOOP_TARGET}x faster")
    row["met"] = row["per_job_ratio"] >= SWEEP_LOOP_TARGET
    return row


def load(jobs: list[Any]) -> dict[str, Any]:
    """The sweep's jobs late against early: each job's time (its run from open to close, and the wait
    until the next run opens: Hydra's set-up of the next job) and the process's memory after it."""
    times = [(b.info.start_time - a.info.start_time) / 1000 for a, b in zip(jobs, jobs[1:])]
    times.append((jobs[-1].info.end_time - jobs[-1].info.start_time) / 1000 + statistics.median(
        (b.info.start_time - a.info.end_time) / 1000 for a, b in zip(jobs, jobs[1:])))  # the last: no next run
    rss = [r.data.metrics.get("rss_mb") for r in jobs]
    early, late = LOAD_EARLY, LOAD_LATE
    if len(jobs) < late.stop - 1:
        raise SystemExit(f"the load row needs {late.stop - 1} jobs; the sweep ran {len(jobs)}")
    row = compare(f"load: time per job, jobs {late.start}-{late.stop - 1} against {early.start}-{early.stop - 1} "
                  "of one process", [times[i - 1] for i in late], [times[i - 1] for i in early],
                  rss_job10_mb=rss[9], rss_job100_mb=rss[99], rss_growth=rss[99] / rss[9] - 1,
                  peak_rss_mb=max(r.data.metrics.get("peak_rss_mb", 0.0) for r in jobs),
                  statuses=sorted({r.info.status for r in jobs}),
                  target=f"late <= {LOAD_TIME_TARGET}x early, memory <= +{LOAD_MEMORY_TARGET:.0%}")
    row["met"] = (row["logitlab_s"] <= LOAD_TIME_TARGET * row["baseline_s"] and row["rss_growth"] <= LOAD_MEMORY_TARGET
                  and row["statuses"] == ["FINISHED"])
    return row


# --------------------------------------------------------------------------- the pipeline


def _project_copy(dest: Path, rev: str | None) -> Path:
    """The files git tracks at `rev` (None: the working tree, untracked files included), and the
    fetched raw data, in a new git repository at `dest`."""
    dest.mkdir(parents=True)
    if rev is None:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
        for rel in filter(None, listed):
            if (ROOT / rel).is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, dest / rel)
    else:
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    (dest / "data" / "raw").mkdir(parents=True, exist_ok=True)
    for raw in (ROOT / "data" / "raw").glob("*.npz"):
        shutil.copy2(raw, dest / "data" / "raw" / raw.name)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


def _baseline_python(workdir: Path, project: Path, name: str = "baseline-venv") -> Path:
    """A Python that imports the baseline's own logitlab (its src/) and this environment's other
    packages: a bare venv whose .pth lists both. This venv's editable install of today's logitlab is
    not on its path (its .pth files are not read there)."""
    import site
    import venv

    env_dir = workdir / name
    venv.EnvBuilder(with_pip=False).create(env_dir)
    packages = next(Path(p) for p in site.getsitepackages() if p.endswith("site-packages"))
    site_dir = next(env_dir.glob("lib/python*/site-packages"))
    (site_dir / "logitlab-baseline.pth").write_text(f"{project / 'src'}\n{packages}\n")
    return env_dir / "bin"


def _stage_env(python_bin: Path) -> dict[str, str]:
    """The environment a copy's commands run in: `python` from `python_bin` (what DVC stages call),
    this environment's dvc next, and no inherited tracking URI (each copy records in its own store)."""
    env = dict(os.environ, PATH=f"{python_bin}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _repro(project: Path, python_bin: Path, jobs: int = 1) -> tuple[float, int, float, int]:
    """`dvc repro` from nothing (the raw data counted as fetched), then a no-op one: (seconds, stages
    run) of each. Stages run `python` from `python_bin`. `jobs` > 1: `make repro JOBS=<jobs>` from
    nothing (python -m logitlab.stages.parallel) instead of `dvc repro`."""
    env = _stage_env(python_bin)
    dvc = str(BIN / "dvc")

    def run(*cmd: str) -> tuple[float, int]:
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} in {project} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return time.perf_counter() - start, sum(line.startswith("Running stage") for line in proc.stdout.splitlines())

    run(dvc, "commit", "--force", *(f"fetch@{d}" for d in ("mnist", "blobs")))
    first = (sys.executable, "-m", "logitlab.stages.parallel", "--jobs", str(jobs)) if jobs > 1 else (dvc, "repro")
    return (*run(*first), *run(dvc, "repro"))


def outputs_differing(serial: Path, parallel: Path) -> list[str]:
    """The files of what `make repro` writes and git keeps (metrics, history, predictions) that are
    not the same bytes in the two copies, or are in one only."""
    def files(project: Path) -> dict[str, bytes]:
        return {str(p.relative_to(project)): p.read_bytes() for folder in ("metrics", "history", "predictions")
                for p in sorted((project / folder).glob("*")) if p.is_file()}

    one, other = files(serial), files(parallel)
    return sorted(name for name in one.keys() | other.keys() if one.get(name) != other.get(name))


def pipeline(workdir: Path, baseline: str | None, trials: int = PIPELINE_TRIALS) -> list[dict[str, Any]]:
    """`dvc repro` from nothing in a copy of the project, then the no-op repro; `make repro JOBS=2`
    from nothing in another copy; with `baseline` (a commit), the repro from nothing in a copy of that
    commit too, right after, on the same machine. `trials` rounds of the three, interleaved, each in
    new copies, so the project's own outputs, dvc.lock and store stay as they are."""
    if baseline:
        _require_commit(baseline)
    full: list[float] = []
    side_by_side: list[float] = []
    base_full: list[float] = []
    noops: list[float] = []
    reruns: list[int] = []
    differing: set[str] = set()
    stages = side_stages = base_stages = 0
    for trial in range(trials):
        ours = _project_copy(workdir / f"project-{trial}", None)
        log(f"pipeline: trial {trial + 1} of {trials}: dvc repro from nothing (the data already fetched) ...")
        seconds, stages, noop, rerun = _repro(ours, BIN)
        full.append(seconds)
        noops.append(noop)
        reruns.append(rerun)
        log(f"pipeline: trial {trial + 1} of {trials}: make repro JOBS={PARALLEL_JOBS} from nothing ...")
        parallel_copy = _project_copy(workdir / f"project-jobs{PARALLEL_JOBS}-{trial}", None)
        seconds, side_stages, _, _ = _repro(parallel_copy, BIN, jobs=PARALLEL_JOBS)
        side_by_side.append(seconds)
        differing.update(outputs_differing(ours, parallel_copy))
        if baseline:
            base = _project_copy(workdir / f"baseline-{trial}", baseline)
            log(f"pipeline: trial {trial + 1} of {trials}: the same at {baseline} ...")
            seconds, base_stages, _, _ = _repro(base, _baseline_python(workdir, base, f"baseline-venv-{trial}"))
            base_full.append(seconds)
            shutil.rmtree(base)
        shutil.rmtree(ours)
        shutil.rmtree(parallel_copy)
    rerun = max(reruns)
    differing_list = sorted(differing)
    name = "pipeline: dvc repro from nothing (data fetched)" + (f", against {baseline}" if baseline else "")
    row = compare(name, full, base_full or None, stages=stages, rounds=rounds(full, base_full),
                  baseline_stages=base_stages, per_stage_s=statistics.median(full) / max(stages, 1),
                  baseline_per_stage_s=statistics.median(base_full) / max(base_stages, 1) if base_full else None,
                  import_tensorflow_keras_mlflow_s=import_seconds())
    if baseline:
        row["target"] = f"ratio >= {PIPELINE_TARGET}"
        row["met"] = row["ratio"] >= PIPELINE_TARGET
    jobs_row = compare(f"pipeline: make repro from nothing (data fetched), JOBS={PARALLEL_JOBS} against JOBS=1",
                       side_by_side, full, stages=side_stages, baseline_stages=stages,
                       outputs_differing=differing_list, rounds=rounds(side_by_side, full),
                       target=f"JOBS={PARALLEL_JOBS} <= {PARALLEL_TARGET}x JOBS=1 (ratio >= {1 / PARALLEL_TARGET:.2f}), "
                              "the same outputs")
    jobs_row["met"] = jobs_row["ratio"] >= 1 / PARALLEL_TARGET and not differing_list
    rows = [row, jobs_row]
    if baseline:
        against = compare(f"pipeline: make repro from nothing (data fetched), JOBS={PARALLEL_JOBS} against {baseline}",
                          side_by_side, base_full, stages=side_stages, baseline_stages=base_stages,
                          rounds=rounds(side_by_side, base_full), target=f"ratio >= {PARALLEL_BASELINE_TARGET}")
        against["met"] = against["ratio"] >= PARALLEL_BASELINE_TARGET
        rows.append(against)
    noop_row = compare("pipeline: no-op dvc repro", noops, None, stages_rerun=rerun,
                       target=f"<= {NOOP_REPRO_TARGET_S} s, nothing rerun")
    noop_row["met"] = max(noops) <= NOOP_REPRO_TARGET_S and rerun == 0
    return [*rows, noop_row]


def study(workdir: Path, baseline: str, trials: int) -> list[dict[str, Any]]:
    """The numerics study's subset (STUDY_SUBSET of experiment=numerics_study, hydra/launcher=parallel),
    its wall clock process start to exit, in a copy of the project and in a copy of `baseline`, the
    trials interleaved; each trial in a new sweep folder and store. Then the numbers: each run's
    test loss and accuracy, paired by head, precision and seed across the two sides."""
    import mlflow

    _require_commit(baseline)
    sides: dict[str, tuple[Path, dict[str, str]]] = {}
    for side, rev in (("logitlab", None), ("baseline", baseline)):
        project = _project_copy(workdir / f"study-{side}", rev)
        python_bin = BIN if rev is None else _baseline_python(workdir, project, "study-baseline-venv")
        env = _stage_env(python_bin)
        for cmd in (("dvc", "commit", "--force", "fetch@blobs"), ("dvc", "repro", "preprocess@blobs")):
            subprocess.run([str(BIN / cmd[0]), *cmd[1:]], cwd=project, env=env, capture_output=True, check=True)
        sides[side] = project, env
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    for trial in range(trials):
        for side, (project, env) in sides.items():
            log(f"study: {' '.join(STUDY_SUBSET)}, trial {trial + 1} of {trials}, {side} ...")
            cmd = ["python", "pipelines/train.py", "-m", "experiment=numerics_study", "hydra/launcher=parallel",
                   *STUDY_SUBSET, f"hydra.sweep.dir={project / f'multirun-{trial}'}",
                   f"tracking.uri=sqlite:///{project / f'study-{trial}.db'}"]
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
            seconds[side].append(time.perf_counter() - start)
            if proc.returncode:
                raise SystemExit(f"the study subset failed on the {side} side:\n{proc.stderr[-3000:]}")

    def numbers(project: Path) -> dict[tuple[str, str, str], tuple[float, float]]:
        client = mlflow.MlflowClient(f"sqlite:///{project / 'study-0.db'}")
        experiment = client.get_experiment_by_name("numerics_study")
        runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'", max_results=1000)
        return {(r.data.params["model.head"], r.data.params["precision"], r.data.params["seed"]):
                (r.data.metrics["test_loss"], r.data.metrics["test_accuracy"])
                for r in runs if "test_loss" in r.data.metrics}

    ours, theirs = numbers(sides["logitlab"][0]), numbers(sides["baseline"][0])
    paired = sorted(set(ours) & set(theirs))
    differ = [key for key in paired if ours[key] != theirs[key]]
    row = compare(f"study: the numerics study's subset ({', '.join(STUDY_SUBSET)}: 3 heads x 3 precisions x 5 seeds, "
                  f"hydra/launcher=parallel), against {baseline}", seconds["logitlab"], seconds["baseline"],
                  rounds=rounds(seconds["logitlab"], seconds["baseline"]),
                  runs=len(ours), baseline_runs=len(theirs), paired_runs=len(paired), runs_differing=len(differ),
                  max_test_loss_difference=max((abs(ours[k][0] - theirs[k][0]) for k in paired), default=None),
                  target=f"ratio >= {STUDY_TARGET}, the same numbers per seed")
    row["met"] = row["ratio"] >= STUDY_TARGET and not differ and len(paired) == len(ours) == len(theirs) > 0
    return [row]


def _require_commit(rev: str) -> None:
    if subprocess.run(["git", "cat-file", "-e", f"{rev}^{{commit}}"], cwd=ROOT, capture_output=True).returncode:
        raise SystemExit(f"bench: error: commit {rev} is not in this clone (git fetch it, or pick another)")


def wall(cmd: list[str]) -> float:
    """Seconds a command takes to run (whatever its exit status), output discarded."""
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, capture_output=True)
    return time.perf_counter() - start


@functools.cache
def import_seconds() -> float:
    """What a train process pays first: `import tensorflow, keras, mlflow` in a fresh Python (best of two)."""
    return min(wall([sys.executable, "-c", "import tensorflow, keras, mlflow"]) for _ in range(2))


# --------------------------------------------------------------------------- the table


def _added(r: dict[str, Any]) -> str:
    """A tracking row's added seconds, and the rounds' [min to max] where the row has them (rows
    written before they were kept have the seconds alone)."""
    if "added_s" not in r:
        return ""
    spread = f" [{r['added_min_s']:+.3f} to {r['added_max_s']:+.3f}]" if "added_min_s" in r else ""
    return f", {r['added_s']:+.3f} s{spread}"


def _seconds(r: dict[str, Any], side: str, unit: str = "") -> str:
    """A side of a row (`logitlab` or `baseline`): its median, and [min-max] when they differ."""
    median, low, high = r[f"{side}_s"], r[f"{side}_min_s"], r[f"{side}_max_s"]
    if median is None:
        return ""
    return f"{median:.3f}{unit}" if low == high else f"{median:.3f}{unit} [{low:.3f}-{high:.3f}]"


def markdown(results: dict[str, Any]) -> str:
    """The README's table: every row of a results file, each figure as results.json has it."""
    def target(r: dict[str, Any]) -> str:
        if "target" not in r:
            return ""
        return f"{r['target']}: " + {True: "met", False: "**not met**", None: ""}[r.get("met")]

    lines = ["| measurement | logitlab, median [min-max] | baseline, median [min-max] | ratio | verdict | of peak | target |",
             "|---|---|---|---|---|---|---|"]
    for r in results["results"]:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        if "overhead_fraction" in r:
            ratio = f"{r['overhead_fraction']:+.1%}" + _added(r)
        elif "wall_over_training" in r:
            ratio = f"{r['wall_over_training']:.2f}x the training; {r['per_job_s']:.2f} s a job"
        elif "per_job_ratio" in r:
            ratio = f"{ratio}; per job {r['per_job_ratio']:.2f} ({r['baseline_per_job_s']:.2f} s against " \
                    f"{r['per_job_s']:.2f} s)"
        elif "rss_growth" in r:
            ratio = f"{r['logitlab_s'] / r['baseline_s']:.2f}x; memory {r['rss_growth']:+.1%}"
        peak = "" if r.get("peak_fraction") is None or r["peak_fraction"] < 0.01 else f"{r['peak_fraction']:.0%}"
        lines.append(f"| {r['name']} | {_seconds(r, 'logitlab', ' s')} | {_seconds(r, 'baseline', ' s')} | {ratio} | "
                     f"{r.get('verdict') or ''} | {peak} | {target(r)} |")
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> str:
    from tabulate import tabulate

    body = [[r["name"], _seconds(r, "logitlab"), _seconds(r, "baseline"),
             "" if r["ratio"] is None else f"{r['ratio']:.2f}", r["verdict"] or "",
             "" if r.get("peak_fraction") is None else f"{r['peak_fraction']:.1%}",
             {True: "yes", False: "NO", None: ""}[r.get("met")]] for r in rows]
    return tabulate(body, headers=["measurement", "logitlab s, median [min-max]", "baseline s, median [min-max]",
                                   "ratio", "verdict", "of peak", "target met"], disable_numparse=True)


def details(rows: list[dict[str, Any]], peaks: dict[str, float]) -> str:
    lines = [f"peaks: 2048x2048 float32 matmul {peaks['matmul'] / 1e9:.0f} GFLOP/s; the 784-256 model's own matmul "
             f"shapes at batch 64 {peaks['attainable'] / 1e9:.0f} GFLOP/s (the attainable peak, 'of peak' above"
             + (f"; median of the trials beside the 784-256 trainers, {peaks['attainable_min'] / 1e9:.0f}-"
                f"{peaks['attainable_max'] / 1e9:.0f}" if "attainable_min" in peaks else "") + ")"]
    for r in rows:
        name = r["name"]
        if name.startswith("training"):
            line = (f"{name}: {r['gflop']:.2f} GFLOP/epoch, {r['peak_fraction']:.1%} of the attainable peak and "
                    f"{r['matmul_peak_fraction']:.1%} of the matmul peak (the baseline: {r['baseline_peak_fraction']:.1%}"
                    f" of the attainable); first epoch {r['first_epoch_s']:.2f} s vs {r['baseline_first_epoch_s']:.2f} s;"
                    f" test accuracy {r['test_accuracy']:.4f} vs {r['baseline_test_accuracy']:.4f} "
                    f"({r['accuracy_points']:+.2f} pt) after {r['optimizer_steps']} vs {r['baseline_optimizer_steps']} steps")
            if "tuned_jit_probe_s" in r:
                probe = r["tuned_jit_probe_s"]
                line += f"; tuned Keras's one try: jit_compile off {probe['false']:.3f} s, on {probe['true']:.3f} s"
            lines.append(line)
        elif name.startswith("tracking"):
            lines.append(f"{name}: {r['overhead_fraction']:+.1%}" + _added(r)
                         + (" round by round" if "added_min_s" in r else ""))
        elif name.startswith("sweep") and "wall_over_training" in r:
            lines.append(f"{name}: {r['wall_over_training']:.2f}x the training; per job (medians): training "
                         f"{r['training_per_job_s']:.2f} s, the rest of its run {r['in_run_overhead_per_job_s']:.2f} s "
                         f"(evaluation, files, datasets, the model, opening and closing the run), between runs "
                         f"{r['between_jobs_s']:.2f} s (Hydra's job set-up); process start to the first run "
                         f"{r['start_s']:.1f} s, last run to exit {r['exit_s']:.1f} s; {r['processes']} process(es)")
        elif name.startswith("load"):
            lines.append(f"{name}: {r['logitlab_s']:.2f} s late against {r['baseline_s']:.2f} s early per job; "
                         f"resident memory {r['rss_job10_mb']:.0f} MiB after job 10, {r['rss_job100_mb']:.0f} MiB after "
                         f"job 100 ({r['rss_growth']:+.1%}), at most {r['peak_rss_mb']:.0f} MiB; runs "
                         f"{', '.join(r['statuses'])}")
        elif name.startswith("pipeline: dvc"):
            against = (f" (the baseline: {r['baseline_stages']} at {r['baseline_per_stage_s']:.1f} s)"
                       if r["baseline_stages"] else "")
            lines.append(f"{name}: {r['stages']} stages at {r['per_stage_s']:.1f} s each on average{against}; a bare "
                         f"`import tensorflow, keras, mlflow` takes {r['import_tensorflow_keras_mlflow_s']:.1f} s")
        elif name.startswith("pipeline: make repro"):
            lines.append(f"{name}: {r['stages']} stages run side by side, {r['baseline_stages']} in series")
        if r.get("rounds"):
            lines.append(f"{name}, round by round: " + "; ".join(
                f"{x['logitlab_s']:.1f} s against {x['baseline_s']:.1f} s ({x['ratio']:.2f})" for x in r["rounds"]))
    return "\n".join(lines)


PARTS = ["training", "tracking", "pictures", "sweep", "pipeline", "study"]
DEFAULT_PARTS = ["training", "tracking", "pictures", "sweep"]  # make bench; `--only pipeline study` is make bench-pipeline


def cpu_model() -> str:
    """The processor's model name (/proc/cpuinfo), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def merged(out: Path, parts: list[str], rows: list[dict[str, Any]], run: dict[str, Any]) -> dict[str, Any]:
    """The results file with the rows of `parts` replaced by `rows` (and the rows of the other parts
    kept, as an earlier run measured them): `--only pipeline --pipeline-baseline ...` adds its row to
    a full run's."""
    old: dict[str, Any] = {}
    if out.is_file():
        try:
            old = json.loads(out.read_text())
        except json.JSONDecodeError:
            log(f"bench: {out} is not JSON; writing it anew")
    kept = [r for r in old.get("results", []) if r.get("part") not in parts and r.get("part") in PARTS]
    runs = {part: info for part, info in old.get("runs", {}).items() if part not in parts and part in PARTS}
    runs.update({part: run for part in parts})
    order = {part: i for i, part in enumerate(PARTS)}
    return {"runs": runs, "results": sorted(kept + rows, key=lambda r: order[r["part"]])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=PARTS, help=f"run these parts (default: {' '.join(DEFAULT_PARTS)});"
                        " the results file keeps the other parts' rows")
    parser.add_argument("--trials", type=int, default=TRIALS, help=f"timed rounds per row (default: {TRIALS})")
    parser.add_argument("--pipeline-baseline", metavar="COMMIT", default=PIPELINE_BASELINE,
                        help=f"the pipeline part's baseline, run side by side (default: {PIPELINE_BASELINE}; "
                        "'none': ours alone)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"where to write the results (default: {RESULTS})")
    parser.add_argument("--markdown", action="store_true", help="print the results file as the README's table; "
                        "run nothing")
    args = parser.parse_args()
    if args.markdown:
        try:
            print(markdown(json.loads(args.out.read_text())))
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            print(f"bench: error: {args.out} is not a results file of this benchmark ({exc}); run `make bench`",
                  file=sys.stderr)
            return 2
        return 0
    if args.trials < 1:
        parser.error(f"--trials must be at least 1, got {args.trials}")
    parts = args.only or DEFAULT_PARTS
    baseline = None if args.pipeline_baseline.lower() == "none" else args.pipeline_baseline
    for dataset in ("mnist", "blobs"):
        if not (ROOT / "data" / "processed" / f"{dataset}.npz").is_file():
            print(f"bench: error: data/processed/{dataset}.npz does not exist; run `make repro` (or "
                  f"`dvc repro preprocess@{dataset}`) first", file=sys.stderr)
            return 2
    started = time.perf_counter()
    peaks = {"matmul": matmul_peak(), "attainable": model_shapes_peak()}
    log(f"peaks: 2048x2048 matmul {peaks['matmul'] / 1e9:.0f} GFLOP/s, 784-256 shapes {peaks['attainable'] / 1e9:.0f} GFLOP/s")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="logitlab-bench-") as tmp:
        work = Path(tmp)
        for part in parts:
            if part == "training":
                new = training(peaks, args.trials)
            elif part == "tracking":
                new = tracking_overhead(work, args.trials)
            elif part == "pictures":
                new = pictures(args.trials)
            elif part == "sweep":
                new = sweep(work)
            elif part == "study":
                new = study(work, STUDY_BASELINE, min(args.trials, STUDY_TRIALS))
            else:
                new = pipeline(work, baseline, min(args.trials, PIPELINE_TRIALS))
            rows += [{"part": part, **row} for row in new]
    elapsed = time.perf_counter() - started
    run = {"date": time.strftime("%Y-%m-%d"), "seconds": elapsed, "trials": args.trials, "cpus": os.cpu_count(),
           "processor": cpu_model(), "python": platform.python_version(),
           "matmul_peak_gflops": peaks["matmul"] / 1e9, "attainable_peak_gflops": peaks["attainable"] / 1e9}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(merged(args.out, parts, rows, run), indent=2) + "\n")
    print(table(rows))
    print()
    print(details(rows, peaks))
    print(f"\n{len(rows)} measurements in {elapsed / 60:.1f} min; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
