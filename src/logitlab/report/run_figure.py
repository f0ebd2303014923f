"""One run's own picture (`outputs.png`, beside its model and in its MLflow artifacts): where its
outputs sit against Keras's clip band and the loss ceiling, with the count of test examples in each.

- raw outputs: every value the head put out (logits, or probabilities for a probability head);
- probabilities: every probability's distance from 0 or from 1 (1 - p taken in float64), on a log
  scale down to float32's smallest, with the clip band [1e-7, 1 - 1e-7] shaded and the exact 0s
  and 1s counted (a log axis cannot show them);
- the true class's loss per test example from those probabilities, with the ceiling (-log 1e-7 =
  16.118) that a loss computed from clipped probabilities cannot pass;
- the loss per epoch, when there is more than one.

Drawn by the train stage after evaluation, with matplotlib's object API (no pyplot state). A process
keeps its figure and canvas for its next run's picture, with the axes emptied, and draws few ticks,
fixed label positions, no legend (the titles name the colours and the dashes) and histograms whose
limits it sets itself; it renders text unhinted and writes the PNG at zlib's fastest level.
`python benchmarks/bench.py --only pictures` measures a picture after the first against a new
figure each run: on an AMD EPYC, 0.085 s against 0.156 s at MNIST's test size and 0.079 s against
0.141 s at blobs' (the target: 0.1 s); 0.56-0.58x this module's earlier kept figure, which had
legends and hinted text, side by side. Most of what is left is FreeType rendering ~420 glyphs and
matplotlib laying out ~45 texts.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from logitlab.evaluate.numerics import CLIP_CEILING, EPSILON, clipped_true_class, probability_masks
from logitlab.files import atomic_path

FIGURE_FILE = "outputs.png"
TINY = float(np.finfo(np.float32).smallest_subnormal)  # 1.4e-45: the smallest float32 above 0
BAND = "#f4c7c3"
CEILING = "#c44e52"
NEAR0, NEAR1 = "#4c72b0", "#dd8452"  # blue, orange: the probabilities panel's title names them
DPI = 80


def true_class_probability(probs: np.ndarray, labels: np.ndarray, task: str) -> np.ndarray:
    """Each example's probability of its own class, in float64 (a binary head's 1 - p for label 0)."""
    p = np.asarray(probs, dtype=np.float64)
    if task == "binary":
        return np.where(labels.reshape(-1) == 1, p[:, 0], 1 - p[:, 0])
    return p[np.arange(len(labels)), labels]


def true_class_loss(probs: np.ndarray, labels: np.ndarray, task: str) -> np.ndarray:
    """Each example's -log p(its class), in float64 (inf where that probability is exactly 0)."""
    with np.errstate(divide="ignore"):
        return -np.log(true_class_probability(probs, np.asarray(labels).reshape(-1).astype(np.int64), task))


def band_counts(probs: np.ndarray, labels: np.ndarray, task: str) -> dict[str, int]:
    """What the picture counts, as the run's numerics count it (logitlab.evaluate.numerics):
    probabilities exactly 0, exactly 1, in Keras's clip band (each of a binary head's p once), and
    test examples whose true class's probability is clipped, so that their loss from p sits at the
    ceiling."""
    probs = np.asarray(probs)
    masks = probability_masks(probs, task)
    at_ceiling = clipped_true_class(probs, np.asarray(labels).reshape(-1).astype(np.int64), task)
    return {"exact0": int(masks["exact0"].sum()), "exact1": int(masks["exact1"].sum()),
            "clip_band": int(masks["clip_band"].sum()), "probabilities": int(masks["exact0"].size),
            "at_ceiling": int(at_ceiling.sum()), "examples": int(len(at_ceiling))}


def _decade(value: float, _: int) -> str:
    return f"1e{round(np.log10(value))}" if value > 0 else "0"


def _log_bins(low: float, high: float, n: int = 48) -> np.ndarray:
    return np.logspace(np.log10(low), np.log10(high), n)


def draw_run_figure(path: Path, outputs: np.ndarray, probs: np.ndarray, labels: np.ndarray, task: str,
                    from_logits: bool, title: str, history: Sequence[dict[str, float]] = ()) -> Path:
    """The run's picture, written atomically to `path`."""
    from matplotlib import rc_context

    curves = len(history) > 1
    with _FIGURES_LOCK:
        fig, axes = _blank_figure(3 + curves)
        fig.suptitle(title, fontsize=10)
        counts = band_counts(probs, labels, task)
        _raw_outputs(axes[0], outputs, from_logits)
        _probabilities(axes[1], probs, counts)
        _losses(axes[2], true_class_loss(probs, labels, task), counts)
        if curves:
            _curves(axes[3], history)
        # FreeType without hinting: glyphs are most of a picture's cost, hinting ~8% of it, and at this
        # size unhinted text reads as well (hinted digits space unevenly); zlib's fastest level: +8% bytes
        with atomic_path(path) as tmp, rc_context({"text.hinting": "no_hinting"}):
            fig.savefig(tmp, format="png", dpi=DPI, pil_kwargs={"compress_level": 1})
    return path


# One figure per panel count, kept for the process's next run: making a figure's axes and their
# ticks is most of a fresh figure's cost (~0.16 s of a run's picture here), and a sweep draws one
# picture per job in one process. Each draw empties the axes of the last run's artists first.
_FIGURES: dict[int, tuple[Any, list[Any]]] = {}
_FIGURES_LOCK = threading.Lock()
_SCALES = (("linear", "log"), ("log", "log"), ("log", "log"), ("linear", "linear"))  # x, y: the panels in order


def _blank_figure(panels: int) -> tuple[Any, list[Any]]:
    if panels not in _FIGURES:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4.0 * panels, 3.3), dpi=DPI)
        FigureCanvasAgg(fig)  # its own canvas, kept: one renderer, whose cache of text extents outlives a draw
        axes = list(fig.subplots(1, panels))
        fig.subplots_adjust(left=0.05, right=0.99, bottom=0.2, top=0.84, wspace=0.28)  # a fixed layout: no solver
        for ax, (x, y) in zip(axes, _SCALES):
            ax.set_xscale(x)
            ax.set_yscale(y)
            _plain_log_ticks(ax)
            ax.xaxis.set_label_coords(0.5, -0.14)   # fixed: no measuring the tick labels at each draw
            ax.yaxis.set_label_coords(-0.15, 0.5)
        _FIGURES[panels] = fig, axes
    fig, axes = _FIGURES[panels]
    for ax in axes:
        for artist in [*ax.lines, *ax.patches, *ax.collections, *ax.texts]:
            artist.remove()
        if ax.get_legend() is not None:
            ax.get_legend().remove()
        ax.set_prop_cycle(None)     # colours from the start of the cycle, as on new axes
        ax.relim()                  # no data left: the next artists set the limits, as on new axes
    return fig, axes


def _raw_outputs(ax, outputs: np.ndarray, from_logits: bool) -> None:
    raw = np.asarray(outputs, dtype=np.float64).reshape(-1)
    counts, edges = np.histogram(raw[np.isfinite(raw)], bins=48)
    _histograms(ax, edges, (counts, {"fill": True, "color": "#4c72b0"}))
    _title(ax, "raw outputs (" + ("logits" if from_logits else "probabilities") + ")")
    ax.set_xlabel("value")
    ax.set_ylabel("count")


def _probabilities(ax, probs: np.ndarray, counts: dict[str, int]) -> None:
    """Every probability's distance from its nearer end, the clip band shaded (always in view)."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)   # a binary head's p once per example
    near0, near1 = p[(p > 0) & (p <= 0.5)], 1 - p[(p > 0.5) & (p < 1)]
    low = max(TINY, min(EPSILON / 100, np.concatenate([near0, near1]).min(initial=1.0) / 3))
    ax.axvspan(low, EPSILON, color=BAND)
    bins = _log_bins(low, 0.5)
    _histograms(ax, bins, *((np.histogram(values, bins=bins)[0], {"color": colour, "linewidth": 1.5, "fill": False})
                            for values, colour in ((near0, NEAR0), (near1, NEAR1))))
    # the key is in the words (the title's colours, the x label's shading): a legend costs ~7% of a picture
    _title(ax, "distance of p from 0 (blue), from 1 (orange)")
    ax.set_xlabel(f"exactly 0: {counts['exact0']}   exactly 1: {counts['exact1']}   "
                  f"clip band (shaded): {counts['clip_band']} of {counts['probabilities']}", fontsize=8)


def _losses(ax, loss: np.ndarray, counts: dict[str, int]) -> None:
    """Each example's loss from p, the ceiling marked."""
    finite = loss[np.isfinite(loss) & (loss > 0)]
    bins = _log_bins(max(finite.min(initial=1e-12) / 2, 1e-300), max(finite.max(initial=1.0), 40))
    _histograms(ax, bins, (np.histogram(finite, bins=bins)[0], {"fill": True, "color": "#55a868"}))
    ax.axvline(CLIP_CEILING, color=CEILING, linestyle="--")  # named in the title: a legend costs ~7% of a picture
    _title(ax, f"loss per test example from p; - - ceiling {CLIP_CEILING:.3f}")
    ax.set_xlabel(f"−log p(true class); at or past the ceiling: {counts['at_ceiling']} of {counts['examples']}",
                  fontsize=8)


def _curves(ax, history: Sequence[dict[str, float]]) -> None:
    from matplotlib.ticker import MaxNLocator

    epochs = np.arange(1, len(history) + 1)
    drawn = [key for key in ("loss", "val_loss") if all(key in h for h in history)]
    for key, style in zip(drawn, ("-", "--")):
        ax.plot(epochs, [h[key] for h in history], style, marker="o", markersize=3)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))  # whole epochs
    _title(ax, "loss per epoch: " + ", ".join(drawn[:1] + [f"{key} (dashed)" for key in drawn[1:]]))
    ax.set_xlabel("epoch")


def _histograms(ax, edges: np.ndarray, *series: tuple[np.ndarray, dict[str, Any]]) -> None:
    """Histograms over the same bins on a log count axis, the limits set here: the bins' extent
    across, from half a count up to twice the highest. matplotlib's own `stairs` walks each vertex
    of the outline to update the data limits, a tenth of a picture's cost here."""
    from matplotlib.patches import StepPatch

    for counts, style in series:
        ax.add_artist(StepPatch(counts, edges, **style))
    ax.set_xlim(float(edges[0]), float(edges[-1]))
    ax.set_ylim(0.5, 2.0 * max(float(np.max(counts, initial=1)) for counts, _ in series))


def _title(ax, text: str) -> None:
    ax.set_title(text, fontsize=9, y=1.0)  # y given: matplotlib skips placing the title at each draw


def _plain_log_ticks(ax) -> None:
    """A few ticks: decades on a log axis with plain labels (no mathtext), no minor ticks; a tick
    label is most of a draw's cost."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

    ax.tick_params(labelsize=7)
    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":
            axis.set_major_locator(LogLocator(numticks=4))
            axis.set_major_formatter(FuncFormatter(_decade))
            axis.set_minor_locator(NullLocator())
        else:
            axis.set_major_locator(MaxNLocator(nbins=5))
