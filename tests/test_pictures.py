"""The report's pictures read at a glance: each picture type, drawn with many configs (3 learning
rates x 4 heads x 2 trainers), keeps every text inside the figure at 7 pt or more, and no legend
over the plotted data, as matplotlib's own layout measures them after a draw. The check fails on
the curves picture as the report drew it before (a copy of that code is below)."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest

from logitlab.evaluate.registry import names
from logitlab.report.plots import plot_curves, plot_decision_regions, plot_digits
from logitlab.report.study import plot_study
from logitlab.report.table import CONFIG, complete, one_per_group, with_config

HEADS = ("logit", "softmax", "softmax_strict", "sigmoid")
# The pipeline's two trainers and the settings that come with each (dvc.yaml's train matrices).
TRAINERS = {"fit": {"params.model.layers": "[25, 15]", "params.trainer.epochs": "10",
                    "params.trainer.validation_split": "0.1"},
            "gradient_tape": {"params.model.layers": "[784, 256]", "params.trainer.epochs": "1",
                              "params.trainer.validation_split": "0.0"}}
SMALLEST = 7  # points


# --------------------------------------------------------------------------- the layout check


def drawn_texts(fig) -> list:
    """Every non-empty Text the figure draws (at the dpi it is saved at): tick labels outside the
    view, which matplotlib keeps but does not draw, are left out."""
    from matplotlib.text import Text

    drawn, draw = [], Text.draw

    def record(self, renderer):
        if self.get_visible() and self.get_text().strip():
            drawn.append(self)
        return draw(self, renderer)

    fig.set_dpi(90)
    with mock.patch.object(Text, "draw", record):
        fig.canvas.draw()
    return drawn


def _display(transform, xy: np.ndarray) -> np.ndarray:
    return transform.transform(np.asarray(xy, dtype=float).reshape(-1, 2))


def _covers(region, points: np.ndarray, pad: float = 0.0) -> bool:
    points = points[np.isfinite(points).all(axis=1)]
    return bool(((points[:, 0] >= region.x0 - pad) & (points[:, 0] <= region.x1 + pad)
                 & (points[:, 1] >= region.y0 - pad) & (points[:, 1] <= region.y1 + pad)).any())


def _crosses(region, points: np.ndarray) -> bool:
    """A polyline (display coordinates; NaN breaks it) passes through the region."""
    from matplotlib.path import Path as MplPath

    finite = np.isfinite(points).all(axis=1)
    for a, b in zip(range(len(points) - 1), range(1, len(points))):
        if finite[a] and finite[b] and MplPath(points[[a, b]]).intersects_bbox(region, filled=False):
            return True
    return False


def data_under(artist, region) -> bool:
    """Whether a plotted artist draws inside `region` (display coordinates): a line's segments and
    markers, a band's or a contour's filled paths, a scatter's points, an image's extent."""
    from matplotlib.collections import Collection
    from matplotlib.image import AxesImage
    from matplotlib.lines import Line2D

    if not artist.get_visible():
        return False
    if isinstance(artist, Line2D):
        points = _display(artist.get_transform(), artist.get_xydata())
        marker = artist.get_marker() not in (None, "None", "none", "", " ")
        dashed = artist.get_linestyle() not in ("None", "none", "", " ")
        pad = artist.get_markersize() * artist.figure.dpi / 72 / 2
        return (dashed and _crosses(region, points)) or (marker and _covers(region, points, pad))
    if isinstance(artist, AxesImage):
        return artist.get_window_extent().overlaps(region)
    if isinstance(artist, Collection):
        offsets = artist.get_offsets()
        if len(offsets) and artist.get_offset_transform() is not artist.get_transform():
            sizes = artist.get_sizes()
            pad = np.sqrt(sizes.max()) * artist.figure.dpi / 72 / 2 if len(sizes) else 0
            return _covers(region, _display(artist.get_offset_transform(), offsets), pad)
        for path in artist.get_paths():
            shown = artist.get_transform().transform_path(path)
            if shown.intersects_bbox(region, filled=True) or _covers(region, shown.vertices):
                return True
    return False


def layout_problems(fig) -> list[str]:
    """What a reader would stumble on, each a line: text that leaves the figure or is under 7 pt,
    a legend over plotted data (not merely over an axes' box) or over a text of the figure, two
    texts over one another (a title over a panel's title, crowded tick labels)."""
    from matplotlib.transforms import Bbox

    texts = drawn_texts(fig)
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    problems = []
    for text in texts:
        extent = text.get_window_extent(renderer)
        if extent.x0 < box.x0 - 1 or extent.x1 > box.x1 + 1 or extent.y0 < box.y0 - 1 or extent.y1 > box.y1 + 1:
            problems.append(f"text leaves the figure: {text.get_text()[:60]!r} at x {extent.x0:.0f}..{extent.x1:.0f},"
                            f" y {extent.y0:.0f}..{extent.y1:.0f} of {box.width:.0f} x {box.height:.0f}")
        if text.get_fontsize() < SMALLEST:
            problems.append(f"text at {text.get_fontsize():g} pt: {text.get_text()[:60]!r}")
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    for legend in legends:
        extent = legend.get_window_extent(renderer)
        for ax in fig.axes:
            region = Bbox.intersection(extent, ax.bbox)
            if region is None:
                continue
            for artist in [*ax.lines, *ax.collections, *ax.images]:
                if data_under(artist, region):
                    problems.append(f"a legend covers data: {artist.get_label() or type(artist).__name__}")
        own = {id(t) for t in [*legend.get_texts(), legend.get_title()]}
        for text in texts:
            if id(text) not in own and text.get_window_extent(renderer).overlaps(extent):
                problems.append(f"a legend covers text: {text.get_text()[:60]!r}")
    boxes = np.array([t.get_window_extent(renderer).extents for t in texts]).reshape(-1, 4)
    apart = ((boxes[:, None, 2] <= boxes[None, :, 0] + 1) | (boxes[None, :, 2] <= boxes[:, None, 0] + 1)
             | (boxes[:, None, 3] <= boxes[None, :, 1] + 1) | (boxes[None, :, 3] <= boxes[:, None, 1] + 1))
    for i, j in zip(*np.nonzero(np.triu(~apart, 1))):
        problems.append(f"texts overlap: {texts[i].get_text()[:40]!r} and {texts[j].get_text()[:40]!r}")
    return problems


@pytest.fixture
def figures(monkeypatch):
    """The figures the report finishes, kept open (plt.close recorded instead) for the check."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    yield kept
    for fig in kept:
        close(fig)


# --------------------------------------------------------------------------- many configs


def many_runs(seeds=(0, 1), precisions=("float32",), dataset="mnist", task="multiclass") -> pd.DataFrame:
    """3 learning rates x 4 heads x 2 trainers (each with its pipeline settings) x seeds x precisions,
    with made-up metrics that move with the learning rate and the precision; at float32 softmax is
    the logit head, elsewhere softmax_strict (as Keras trains them)."""
    rows = []
    for lr in ("0.001", "0.01", "0.1"):
        for trainer, settings in TRAINERS.items():
            for precision in precisions:
                for head in HEADS:
                    for seed in seeds:
                        twin = "logit" if head == "softmax" and precision == "float32" else (
                            "softmax_strict" if head == "softmax" else head)
                        level = (float(lr) * 0.5 * (1 + HEADS.index(twin) + 3 * (precision != "float32"))
                                 * (1 + (trainer == "fit")) + 0.01 * seed)
                        rows.append({"run_id": f"{lr}-{trainer}-{precision}-{head}-{seed}", "params.seed": str(seed),
                                     "params.optimizer.lr": lr, "tags.dataset": dataset, "tags.task": task,
                                     "tags.head": head, "tags.trainer": trainer, "params.precision": precision,
                                     "params.paths.models": f"/models/{seed}", **settings,
                                     "metrics.test_accuracy": 1 - level, "metrics.test_loss_f64": level,
                                     "metrics.clip_ceiling_fraction": min(level * 2, 1.0),
                                     "metrics.loss_err_train_mean": level * 1e-3})
    return with_config(complete(pd.DataFrame(rows)))


def fake_history(run: pd.Series) -> pd.DataFrame:
    """Loss per epoch: the fit runs 10 epochs with val_loss, the GradientTape runs 1 and none;
    softmax's curves are the logit head's (float32 Keras trains them alike)."""
    head = "logit" if run["tags.head"] == "softmax" else run["tags.head"]
    scale = 1 + HEADS.index(head) * 0.2 + float(run["params.optimizer.lr"])
    epochs = np.arange(1, int(run["params.trainer.epochs"]) + 1)
    history = pd.DataFrame({"epoch": epochs, "loss": scale / (epochs + 1)})
    if float(run["params.trainer.validation_split"]) > 0:
        history["val_loss"] = scale / epochs ** 0.8
    return history


class FakeArtifacts:
    """outputs.npz per run in a folder: probabilities over 10 classes for `n` examples, and a grid
    over the plane; and the examples they were evaluated on (images or points)."""

    def __init__(self, folder: Path, n: int = 40, image: tuple[int, int] | None = None):
        rng = np.random.default_rng(0)
        self.folder, self.y = folder, rng.integers(0, 4, n)
        self.x = rng.random((n, *image)) if image else rng.normal(size=(n, 2)) + self.y[:, None]

    def __call__(self, run: pd.Series, name: str) -> Path:
        path = self.folder / run["run_id"] / name
        if not path.exists():
            rng = np.random.default_rng(len(run["run_id"]))
            probs = rng.dirichlet(np.ones(10), len(self.y))
            g0, g1 = np.meshgrid(np.linspace(-2, 6, 30), np.linspace(-2, 6, 30))
            path.parent.mkdir(parents=True)
            np.savez(path, outputs=probs, probabilities=probs, labels=self.y, grid_x0=g0[0], grid_x1=g1[:, 0],
                     grid_class=((g0 > 2).astype(int) + 2 * (g1 > 2)).astype(np.int16))
        return path

    def examples(self, run: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        return self.x, self.y


def draw_each(kind: str, out: Path) -> list[Path]:
    if kind == "curves":
        return plot_curves(many_runs(), fake_history, out)
    if kind == "study":
        return plot_study(many_runs(seeds=range(3), precisions=("float32", "mixed_float16", "mixed_bfloat16")), out)
    if kind == "digits":
        images = FakeArtifacts(out / "artifacts", image=(28, 28))
        return plot_digits(many_runs(), images, out, images.examples, 8, "mnist", (28, 28))
    points = FakeArtifacts(out / "artifacts")
    both = pd.concat([many_runs(dataset="blobs"), many_runs(dataset="blobs", task="binary")], ignore_index=True)
    return plot_decision_regions(both, points, out, points.examples, 2, "blobs")


@pytest.mark.parametrize("kind", ["curves", "decision_regions", "digits", "study"])
def test_every_picture_reads_with_many_configs(kind, figures, tmp_path):
    """Each picture type with 24 configs (and 3 precisions in the study): nothing leaves the figure,
    no legend covers data, no text under 7 pt. The PNGs stay in tmp_path to be looked at."""
    written = draw_each(kind, tmp_path)
    assert written and len(figures) == len(written)
    for png, fig in zip(written, figures):
        assert png.stat().st_size > 10_000
        assert layout_problems(fig) == [], png.name


def test_labels_name_only_what_sets_a_line_apart_in_short_words(figures, tmp_path):
    """No dotted config in any text of a picture; the curves' legends: the heads, and what else sets
    a line apart in short words; identical curves said once, in the note."""
    draw_each("curves", tmp_path)
    [fig] = figures
    texts = [t.get_text() for t in drawn_texts(fig)]
    assert not [t for t in texts if "model.layers" in t or "optimizer.lr" in t or "=[" in t]
    heads, lines = ([t.get_text() for t in legend.get_texts()] for legend in fig.legends)
    assert heads == sorted(HEADS)
    trainers = (("GradientTape", "784-256, 1 epoch, no val"), ("fit", "25-15, 10 epochs, val 0.1"))
    assert lines == [f"{trainer}, lr {lr}, {rest}" for trainer, rest in trainers for lr in ("0.001", "0.01", "0.1")]
    [note] = [t.replace("\n", " ") for t in texts if t.startswith("Identical lines")]
    assert ": logit = softmax. Each config drawn from its lowest seed's run (2 seeds per config)." in note, \
        "the heads coincide in every line style and panel where both are drawn: said once"


def test_the_study_view_has_a_column_per_precision_and_the_heads_as_colours(figures, tmp_path):
    plot_study(many_runs(seeds=range(3), precisions=("mixed_bfloat16", "float32", "mixed_float16")), tmp_path)
    [fig] = figures
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["float32", "mixed_float16", "mixed_bfloat16"]
    assert len(fig.axes) == 3 * len(names(study=True))
    heads, lines = ([t.get_text() for t in legend.get_texts()] for legend in fig.legends)
    assert heads == sorted(HEADS) and len(lines) == 2
    note = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    assert "float32: logit = softmax; mixed_float16, mixed_bfloat16: softmax = softmax_strict." in note
    bands = [c for c in fig.axes[0].collections]
    assert len(bands) == len(HEADS) * len(TRAINERS), "a 95% band per head and line in each panel"


# --------------------------------------------------------------------------- the pictures before


def todays_curves(runs: pd.DataFrame, history):
    """The curves picture as report/plots.py drew it until this check (main at 0ef673c): each label
    the head plus the raw config difference, every identical curve named in its label and in the
    title, a legend inside the axes at 5-6 pt, tight_layout. Returns the open figure."""
    import matplotlib.pyplot as plt

    shown = complete(runs.copy())
    shown = one_per_group(shown)
    labels = [" ".join(str(p) for p in (r["tags.head"], None if r["tags.trainer"] == "fit" else r["tags.trainer"],
                                         None if r["params.precision"] == "float32" else r["params.precision"],
                                         r[CONFIG] or None) if p) for _, r in shown.iterrows()]
    epochs = {label: history(run) for label, (_, run) in zip(labels, shown.iterrows())}
    keys = [k for k in ("loss", "val_loss") if any(k in e for e in epochs.values())]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.0 * len(keys), 3.6), squeeze=False)
    styles = [("-", None), ("--", "o"), (":", "s"), ("-.", "^"), ((0, (5, 1)), "x"), ((0, (1, 2)), "D")]
    notes = []
    for ax, key in zip(axes[0], keys):
        lines = {label: (e["epoch"].to_numpy(), e[key].to_numpy()) for label, e in epochs.items() if key in e}
        sets: dict[bytes, list[str]] = {}
        for label, (x, y) in lines.items():
            sets.setdefault(np.concatenate([x, y]).astype(float).tobytes(), []).append(label)
        same = [s for s in sets.values() if len(s) > 1]
        twins = {label: [o for o in s if o != label] for s in same for label in s}
        for i, (label, (x, y)) in enumerate(lines.items()):
            linestyle, marker = styles[i % len(styles)]
            name = label + (f" (= {', '.join(twins[label])})" if label in twins else "")
            ax.plot(x, y, linestyle=linestyle, marker=marker, markevery=max(1, len(x) // 8) if marker else None,
                    markersize=4, label=name, alpha=0.9)
        ax.legend(fontsize=5 if len(lines) > 6 else 6)
        notes += [f"{key}: " + " = ".join(labels) for labels in same]
        ax.set_yscale("log")
    title = f"{shown['tags.dataset'].iloc[0]} {shown['tags.task'].iloc[0]}: loss per epoch"
    fig.suptitle(title + ("\nidentical curves: " + "; ".join(notes) if notes else ""), fontsize=9)
    fig.tight_layout()
    return fig


def pipeline_mnist_runs() -> pd.DataFrame:
    """The runs of report/plots/curves_mnist_multiclass.png: four heads with fit on MNIST 25-15 and
    two with GradientTape on 784-256, one seed each."""
    runs = many_runs(seeds=(0,))
    return with_config(runs[(runs["params.optimizer.lr"] == "0.001")
                            & ((runs["tags.trainer"] == "fit") | runs["tags.head"].isin(["logit", "softmax"]))].copy())


def test_the_check_fails_on_the_curves_as_drawn_before_and_passes_now(figures, tmp_path):
    """The pipeline's MNIST curves (curves_mnist_multiclass.png), as drawn before and now; both PNGs
    stay in tmp_path, and the problems found before are printed (pytest -s)."""
    plot_curves(pipeline_mnist_runs(), fake_history, tmp_path)
    [after] = figures
    before = todays_curves(pipeline_mnist_runs(), fake_history)
    figures.append(before)
    problems = layout_problems(before)
    before.savefig(tmp_path / "before_curves_mnist_multiclass.png", dpi=90)
    print("\n".join(problems))
    assert any(p.startswith("text leaves the figure") for p in problems)
    assert any(p.startswith("a legend covers data") for p in problems)
    assert any(p.startswith("text at 6 pt") for p in problems)
    assert layout_problems(after) == []


def test_the_check_sees_a_legend_over_lines_but_not_over_an_empty_corner(figures):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1], label="rising")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)   # the corner the line never reaches
    assert layout_problems(fig) == []
    ax.legend(loc="center", fontsize=8)       # over the line's middle
    assert layout_problems(fig) == ["a legend covers data: rising"]
    plt.close(fig)
