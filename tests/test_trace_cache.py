"""Jobs of one process share their traced graph functions (logitlab.model.compiled.reuse): each job
is bit for bit the same job run alone in a fresh process, and a job of a model traced before does
not trace again. The jobs go through what the train stage calls: `prepare`, the stage's trainer
(`trainer_for`), and the test-set evaluation of `record`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT, subprocess_env

# (trainer, precision, overrides): a different seed and a different learning rate between jobs of
# the same model, a job that diverges (its weights NaN or huge, its optimizer's state with them), the
# first job again after them, the other trainer on the same cached model, and mixed_float16 (a
# LossScaleOptimizer: a job changes its step counter, and a diverging one halves its loss scale).
DIVERGES = "optimizer.lr=100000.0"
SWEEP = [
    ("fit", "float32", ["seed=0"]),
    ("fit", "float32", ["seed=1"]),
    ("fit", "float32", ["seed=0", "optimizer.lr=0.01"]),
    ("fit", "float32", ["seed=1", DIVERGES]),
    ("fit", "float32", ["seed=0"]),
    ("gradient_tape", "float32", ["seed=0"]),
    ("gradient_tape", "float32", ["seed=1"]),
    ("gradient_tape", "float32", ["seed=0", "optimizer.lr=0.01"]),
    ("fit", "mixed_float16", ["seed=0"]),
    ("fit", "mixed_float16", ["seed=0", DIVERGES]),
    ("fit", "mixed_float16", ["seed=1", "optimizer.lr=0.01"]),
    ("gradient_tape", "mixed_float16", ["seed=0"]),
    ("gradient_tape", "mixed_float16", ["seed=1"]),
]


def tiny_data() -> dict[str, np.ndarray]:
    """Four 2-D blobs: 150 training examples (a partial last batch, 15 of them for validation) and 40 test ones."""
    rng = np.random.default_rng(0)
    centers = np.array([[-5, 2], [-2, -2], [1, 2], [5, -2]], np.float32)
    y = np.arange(190) % 4
    x = (centers[y] + rng.normal(size=(190, 2))).astype(np.float32)
    return {"x_train": x[:150], "y_train": y[:150], "x_eval": x[150:], "y_eval": y[150:]}


def run_job(trainer: str, precision: str, overrides: list[str]) -> dict[str, np.ndarray]:
    """One job as the train stage runs it, without the tracking store: its final weights and
    optimizer variables, every epoch's metrics, and its test metrics and outputs; for a job that
    diverged, its weights and optimizer variables then, and the error."""
    from logitlab.errors import Diverged
    from logitlab.evaluate.metrics import evaluate
    from logitlab.model.heads import head_of
    from logitlab.schema import compose
    from logitlab.stages.train import eval_set, trainer_for
    from logitlab.train.loop import prepare

    cfg = compose(ROOT, ["dataset=blobs", f"trainer={trainer}", f"precision={precision}", "trainer.epochs=3",
                         "trainer.verbose=0", "trainer.log_every_n_steps=2", *overrides])
    head, data = head_of(cfg), tiny_data()
    model, x, y = prepare(cfg, head, data)
    out = {}
    try:
        history = trainer_for(cfg, head, [])(model, x, y, cfg, None)
    except Diverged as exc:
        out["diverged"] = np.array(str(exc))
    out.update({f"weight_{i}": np.asarray(w) for i, w in enumerate(model.get_weights())})
    # by position, as Keras saves them and the checkpoint does (a mixed_float16 Adam built inside the
    # GradientTape step names its moments loss_scale_optimizer/adam/..., built before it adam/...)
    out.update({f"optimizer_{i}": np.asarray(v) for i, v in enumerate(model.optimizer.variables)})
    if "diverged" in out:
        return out
    out.update({f"history_{key}": np.array([epoch[key] for epoch in history]) for key in history[0]})
    x_eval, y_eval = eval_set(cfg, data)
    result = evaluate(model, x_eval, y_eval, str(cfg.task), head, cfg.evaluate.batch_size, 0)
    out.update({f"test_{key}": np.array(value) for key, value in result.metrics.items()})
    out["test_outputs"] = np.asarray(result.outputs)
    return out


def alone(jobs: list[tuple[str, str, list[str]]], folder: Path) -> list[dict[str, np.ndarray]]:
    """Each job run alone, in a fresh process of its own (two at a time), on the logitlab this process tests."""
    import logitlab

    env = subprocess_env(PYTHONPATH=str(Path(logitlab.__file__).parents[1]))
    results, running = [], []
    for i, job in enumerate(jobs):
        out = folder / f"{i}.npz"
        running.append((subprocess.Popen([sys.executable, __file__, json.dumps(job), str(out)], env=env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), out))
        if len(running) == 2 or i == len(jobs) - 1:
            for proc, path in running:
                _, err = proc.communicate(timeout=300)
                assert proc.returncode == 0, err[-3000:]
                with np.load(path) as arrays:
                    results.append(dict(arrays))
            running = []
    return results


def differences(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> list[str]:
    """The arrays that are not bit for bit the same (NaN equal to NaN)."""
    assert sorted(got) == sorted(expected)
    return [key for key in expected if got[key].dtype != expected[key].dtype
            or not np.array_equal(got[key], expected[key], equal_nan=expected[key].dtype.kind in "fc")]


@pytest.mark.slow  # eleven reference jobs, each in a fresh process
def test_jobs_reusing_traced_functions_are_bit_identical_to_jobs_run_alone(tmp_path):
    from logitlab.model import compiled

    compiled.clear_cache()
    results, traces = [], []
    for job in SWEEP:
        results.append(run_job(*job))
        traces.append(compiled.tracing_count())

    unique = []
    for job in SWEEP:
        if job not in unique:
            unique.append(job)
    references = dict(zip(map(json.dumps, unique), alone(unique, tmp_path)))
    for i, (job, got) in enumerate(zip(SWEEP, results)):
        assert not differences(got, references[json.dumps(job)]), f"job {i} {job} differs from the job alone in: " \
            f"{differences(got, references[json.dumps(job)])}"
    assert not np.array_equal(results[0]["weight_0"], results[1]["weight_0"]), "the seed changes the job"
    assert not np.array_equal(results[0]["weight_0"], results[2]["weight_0"]), "so does the learning rate"

    assert [i for i, job in enumerate(SWEEP) if "diverged" in results[i]] == [3, 9], "the jobs that diverge"
    mixed = [r["optimizer_3"] for r in results[8:11]]  # the LossScaleOptimizer's dynamic_scale after each job
    assert mixed[1] < mixed[0] == mixed[2], f"the diverging job lowers the loss scale, the next starts afresh: {mixed}"

    # The first job of each trainer and precision traces (the GradientTape step, on the cached model
    # fit trained); every job after it with the same trainer and precision (another seed, another
    # learning rate, after a diverged job) traces nothing, evaluation included.
    seen = set()
    for i, (trainer, precision, _) in enumerate(SWEEP):
        if (trainer, precision) in seen:
            assert traces[i] == traces[i - 1], f"job {i} {SWEEP[i]} traced again: {traces}"
        else:
            assert traces[i] > (traces[i - 1] if i else 0), f"job {i} {SWEEP[i]}: {traces}"
            seen.add((trainer, precision))


def test_a_model_of_another_shape_is_cached_apart_and_the_cache_stays_small():
    import keras

    from logitlab.model import compiled
    from logitlab.model.build import build_model, compile_model
    from logitlab.model.heads import head_of
    from logitlab.schema import compose

    head = head_of(compose(ROOT, ["dataset=blobs"]))
    compiled.clear_cache()

    def fresh(units: int, lr: float = 0.001):  # as `prepare` makes it: the optimizer's name is in the key
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        return compile_model(build_model(2, 4, [units], head), head, lr)

    first = compiled.reuse(fresh(3))
    assert compiled.reuse(fresh(3, lr=0.1)) is first
    assert float(first.optimizer.learning_rate) == pytest.approx(0.1)
    assert compiled.reuse(fresh(4)) is not first
    for units in range(5, 5 + compiled.CACHE_SIZE):
        compiled.reuse(fresh(units))
    assert len(compiled._cache) == compiled.CACHE_SIZE
    assert all(entry.model is not first for entry in compiled._cache.values()), "the least recently used goes"
    compiled.clear_cache()


if __name__ == "__main__":  # one job alone: python tests/test_trace_cache.py JOB_JSON OUT.npz
    job, out = json.loads(sys.argv[1]), sys.argv[2]
    np.savez(out, **run_job(*job))
