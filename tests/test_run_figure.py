"""A run's own picture (outputs.png): what it counts, and that it draws for every task and trainer."""

import numpy as np
import pytest

from logitlab.report.run_figure import band_counts, draw_run_figure


def test_the_counts_are_the_clip_band_the_exact_ends_and_the_ceiling():
    probs = np.array([[1.0, 0.0, 0.0], [0.5, 0.5 - 5e-8, 5e-8], [0.2, 0.3, 0.5]], np.float32)
    labels = np.array([1, 2, 2])  # example 0 has p(true) = 0 exactly: an infinite loss; example 1 5e-8
    counts = band_counts(probs, labels, "multiclass")
    assert counts == {"exact0": 2, "exact1": 1, "clip_band": 4, "probabilities": 9, "at_ceiling": 2, "examples": 3}


def test_a_binary_head_counts_each_p_once_and_its_label_0_through_1_minus_p():
    probs = np.array([[1.0], [1e-9], [0.9]], np.float32)
    counts = band_counts(probs, np.array([0, 0, 1]), "binary")
    assert counts["probabilities"] == 3 and counts["exact1"] == 1 and counts["clip_band"] == 2
    assert counts["at_ceiling"] == 1, "label 0 with p = 1: 1 - p = 0, the loss is past the ceiling"


@pytest.mark.parametrize("task, epochs", [("multiclass", 10), ("binary", 3), ("multiclass", 1)])
def test_the_figure_draws_for_every_task_and_a_one_epoch_history(tmp_path, task, epochs):
    rng = np.random.default_rng(0)
    k = 1 if task == "binary" else 4
    outputs = rng.normal(0, 20, size=(200, k)).astype(np.float32)
    probs = (1 / (1 + np.exp(-outputs)) if task == "binary" else
             np.exp(outputs - outputs.max(1, keepdims=True)) / np.exp(outputs - outputs.max(1, keepdims=True)).sum(1,
                                                                                                     keepdims=True))
    history = [{"loss": 1 / (e + 1), "val_loss": 1 / (e + 2)} for e in range(epochs)]
    path = draw_run_figure(tmp_path / "outputs.png", outputs, probs.astype(np.float32), rng.integers(0, 2 if
                           task == "binary" else k, 200), task, True, "a run", history)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert [p.name for p in tmp_path.iterdir()] == ["outputs.png"], "written atomically, nothing else left"


def test_a_figure_drawn_after_other_runs_is_the_figure_a_new_process_draws(tmp_path, monkeypatch):
    """A process keeps its figure for the next run's picture (making the axes is most of the cost);
    nothing of one run may show in the next: limits, scales, colours, legends, counts."""
    import logitlab.report.run_figure as run_figure

    rng = np.random.default_rng(1)

    def picture(name, k, task, epochs, spread):
        outputs = rng.normal(0, spread, size=(300, k)).astype(np.float32)
        if task == "binary":
            probs = 1 / (1 + np.exp(-outputs.astype(np.float64)))
        else:
            e = np.exp(outputs - outputs.max(1, keepdims=True))
            probs = e / e.sum(1, keepdims=True)
        history = [{"loss": 2.0 / (e + 1), "val_loss": 2.5 / (e + 1)} for e in range(epochs)]
        labels = rng.integers(0, max(k, 2), 300)
        return lambda: draw_run_figure(tmp_path / f"{name}.png", outputs, probs.astype(np.float32), labels, task,
                                       True, name, history).read_bytes()

    first = picture("first", 10, "multiclass", 10, 3.0)
    monkeypatch.setattr(run_figure, "_FIGURES", {})          # as in a new process
    alone = first()
    for other in (picture("other", 4, "multiclass", 10, 60.0), picture("binary", 1, "binary", 3, 0.5),
                  picture("tape", 10, "multiclass", 1, 30.0)):
        other()
    assert first() == alone, "the same run's picture, after three others in this process"
    assert len(run_figure._FIGURES) == 2, "a figure per panel count (with and without the loss curves)"
