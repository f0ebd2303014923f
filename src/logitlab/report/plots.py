"""The report's pictures, each chosen by what a dataset's plug-in says an example is (an image, a
point in the plane): image datasets' test examples with each variant's prediction, two-feature
datasets' decision regions per variant, and the loss curves of every variant side by side (`dvc
plots` and the MLflow UI draw each run's own).

Each function takes the runs (one row each, as report.table makes them) and `artifact(row, name)`,
which gives the local path of a run's outputs.npz, wherever the run keeps it, or `history(row)`, its
epochs. Every picture shows one run per variant and config (report.table.one_per_group), labelled by
what sets it apart among the runs it shows, in short words (report.table.short_labels), so a sweep's
learning rates or model sizes never share a name. Where lines share an axis, the heads are colours and
whatever else sets them apart line styles, each with its own legend; legends and notes (identical
lines, seeds) sit in a key below the panels, which the figure grows to hold (save_figure), so no text
leaves the figure and no legend covers data (tests/test_pictures.py checks both from matplotlib's own
layout). Nothing here needs TensorFlow: the train stage wrote each model's predictions, over the plane
too."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from logitlab.files import OUTPUTS_FILE, atomic_path, load_arrays
from logitlab.report.table import one_per_group, short_labels

Artifact = Callable[[pd.Series, str], Path]
Examples = Callable[[pd.Series], tuple[np.ndarray, np.ndarray]]  # the examples a run was evaluated on, x and y
History = Callable[[pd.Series], pd.DataFrame]   # a run's epochs: `epoch` (from 1), `loss`, `val_loss`, ...
Key = tuple[list, list[str]]  # a legend's handles and labels
# Line styles that tell a figure's lines apart where colour already tells another factor; past
# these, filled markers join them.
LINESTYLES = ["-", "--", ":", "-.", (0, (3, 1, 1, 1, 1, 1)), (0, (8, 2))]
MARKERS = ["o", "s", "^", "D", "v", "P"]
TEXT_SIZE = 8    # points: legends, notes, panel titles (7 is the least that reads at 90 dpi)
TITLE_SIZE = 10
MARGIN = 0.1     # inches around the key and the note


def figure(rows: int, cols: int, width: float = 4.0, height: float = 3.0, **kwargs: Any):
    """A figure of rows x cols panels, each `width` x `height` inches; `kwargs` go to subplots
    (sharey, width_ratios, ...)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, **kwargs)
    return plt, fig, axes


def save_figure(plt, fig, path: Path, title: str = "", keys: Sequence[Key] = (), note: str = "") -> Path:
    """Finish the figure and write it: its title, wrapped to the figure's width; below the panels,
    the legends (`keys`) side by side where they fit, then the note, the figure growing by their
    height; the panels laid out in the rest, so that no text leaves the figure and no legend covers
    data."""
    bottom, height = _key_block(fig, keys, note), fig.get_figheight()
    if title:  # at a fixed distance from the top, whatever the height: tight_layout leaves room for it there
        fig.suptitle(wrap(fig, title, fig.get_figwidth() - 2 * MARGIN, TITLE_SIZE), fontsize=TITLE_SIZE,
                     y=1 - MARGIN / height, va="top")
    fig.tight_layout(rect=(0, bottom / height, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return path


def _key_block(fig, keys: Sequence[Key], note: str) -> float:
    """Place the legends and the note below the figure's panels, from its bottom edge up (in inches,
    so that growing the figure leaves them where they are); return the height they take."""
    renderer = fig.canvas.get_renderer()
    usable = fig.get_figwidth() - 2 * MARGIN
    y = MARGIN
    if note:
        text = fig.text(MARGIN, y, wrap(fig, note, usable, TEXT_SIZE), fontsize=TEXT_SIZE, va="bottom",
                        transform=fig.dpi_scale_trans)
        y += text.get_window_extent(renderer).height / fig.dpi + MARGIN
    rows: list[list] = [[]]
    for handles, labels in keys:
        legend = _legend(fig, handles, labels, usable, renderer)
        width = legend.get_window_extent(renderer).width / fig.dpi
        if rows[-1] and sum(w for _, w in rows[-1]) + width > usable:
            rows.append([])
        rows[-1].append((legend, width))
    for row in reversed([r for r in rows if r]):
        x = MARGIN
        for legend, width in row:
            legend.set_bbox_to_anchor((x, y), transform=fig.dpi_scale_trans)
            x += width
        y += max(legend.get_window_extent(renderer).height for legend, _ in row) / fig.dpi
    if y > MARGIN:
        fig.set_figheight(fig.get_figheight() + y)
    return y if y > MARGIN else 0.0


def _legend(fig, handles: list, labels: list[str], width: float, renderer):
    """A legend in as many columns as fit in `width` inches (labels wrapped where even one is too wide)."""
    labels = [wrap(fig, label, width - 0.8, TEXT_SIZE, ", ") for label in labels]
    for ncols in range(len(labels), 0, -1):
        legend = fig.legend(handles, labels, loc="lower left", ncols=ncols, fontsize=TEXT_SIZE, frameon=False,
                            bbox_to_anchor=(0, 0), bbox_transform=fig.dpi_scale_trans, borderaxespad=0.2)
        if ncols == 1 or legend.get_window_extent(renderer).width / fig.dpi <= width:
            return legend
        legend.remove()


def wrap(fig, text: str, width: float, size: float, at: str = " ") -> str:
    """`text` broken into lines at most `width` inches wide at `size` points, as the figure's renderer
    measures them: at `at` (", " keeps a label's parts whole: `1 epoch`, not `1` and `epoch`), a part
    too wide at spaces, a word too wide where it must be."""
    from matplotlib.font_manager import FontProperties

    renderer, font = fig.canvas.get_renderer(), FontProperties(size=size)

    def fits(line: str) -> bool:
        return renderer.get_text_width_height_descent(line, font, ismath=False)[0] <= width * fig.dpi

    def lines(text: str, at: str) -> list[str]:
        done, line = [], ""
        for piece in text.split(at) if at else list(text):
            if line and fits(line + at + piece):
                line += at + piece
                continue
            if line:
                done.append(line + at.rstrip())
            parts = [piece] if fits(piece) or len(piece) < 2 else lines(piece, " " if at.strip() else "")
            done += parts[:-1]
            line = parts[-1]
        return [*done, line]

    return "\n".join(line for paragraph in text.split("\n") for line in lines(paragraph, at))


def _remake(row: pd.Series) -> str:
    return f"dvc repro -f {row['stage']}" if isinstance(row.get("stage"), str) else f"rerun the run {row['run_id']}"


def _outputs(row: pd.Series, artifact: Artifact, *extra: str) -> dict[str, np.ndarray]:
    return load_arrays(artifact(row, OUTPUTS_FILE), ("outputs", "probabilities", "labels", *extra), remake=_remake(row))


def plot_digits(runs: pd.DataFrame, artifact: Artifact, out: Path, examples: Examples, n: int,
                dataset: str, shape: tuple[int, ...]) -> list[Path]:
    """The first `n` images (H x W: `shape`) each multi-class run of `dataset` was evaluated on, with
    the true label and the run's prediction (red: wrong); each row named on its left."""
    group = one_per_group(runs[(runs["tags.dataset"] == dataset) & (runs["tags.task"] == "multiclass")])
    if group.empty:
        return []
    label_width = 1.8  # inches, the names' column
    plt, fig, axes = figure(len(group), n + 1, 1.1, 1.3, width_ratios=[label_width / 1.1] + [1] * n)
    fig.set_figwidth(1.1 * n + label_width)
    for row, (_, run) in zip(axes, group.iterrows()):
        arrays = _outputs(run, artifact)
        predicted = arrays["probabilities"].argmax(axis=1)
        images, _ = examples(run)
        for ax in row:
            ax.set_axis_off()
        for i, ax in enumerate(row[1:len(images) + 1]):
            ax.imshow(images[i].reshape(shape), cmap="gray")
            wrong = predicted[i] != arrays["labels"][i]
            ax.set_title(f"{arrays['labels'][i]}→{predicted[i]}", fontsize=TEXT_SIZE, color="red" if wrong else "black")
        row[0].text(1.0, 0.5, wrap(fig, run["label"], label_width - 0.2, TEXT_SIZE, ", "), ha="right", va="center",
                    transform=row[0].transAxes, fontsize=TEXT_SIZE)
    return [save_figure(plt, fig, out / f"digits_{dataset}.png", f"{dataset} examples: true → predicted",
                        note=seeds_note(group))]


def plot_decision_regions(runs: pd.DataFrame, artifact: Artifact, out: Path, examples: Examples,
                          positive_class: int, dataset: str) -> list[Path]:
    """Each variant of `dataset` (two features): its predicted class over the plane (its outputs.npz's grid), with the
    points it was evaluated on; the heads as columns and what else sets runs apart as rows, where both vary. Class k is
    tab10's colour k in regions and points alike; binary: the configured positive class in its own colour, the rest
    grey."""
    written = []
    for task, group in runs[runs["tags.dataset"] == dataset].groupby("tags.task"):
        group = one_per_group(group)
        place, rows, cols = _grid(group)
        named = bool(rows[0])
        plt, fig, axes = figure(len(rows), len(cols), 2.8, 2.8)
        for ax in axes.flat:
            ax.set_axis_off()
        for (_, run), (r, c) in zip(group.iterrows(), place):
            ax = axes[r, c]
            ax.set_axis_on()
            grid = _outputs(run, artifact, "grid_x0", "grid_x1", "grid_class")
            regions = grid["grid_class"]
            x, y = examples(run)
            if task == "binary":
                ax.contourf(grid["grid_x0"], grid["grid_x1"], regions, levels=[-0.5, 0.5, 1.5],
                            colors=binary_colours(positive_class), alpha=0.3)
                ax.scatter(x[:, 0], x[:, 1], c=point_colours(y, positive_class), s=6)
            else:
                ax.contourf(grid["grid_x0"], grid["grid_x1"], regions, alpha=0.3,
                            levels=np.arange(regions.max() + 2) - 0.5, cmap="tab10", vmin=0, vmax=9)
                ax.scatter(x[:, 0], x[:, 1], c=y, s=6, cmap="tab10", vmin=0, vmax=9)
            if not named:
                ax.set_title(wrap(fig, run["label"], 2.5, TEXT_SIZE, ", "), fontsize=TEXT_SIZE)
        for ax, head in zip(axes[0], cols if named else []):
            ax.set_title(head, fontsize=TITLE_SIZE)
        for ax, rest in zip(axes[:, 0], rows if named else []):
            ax.annotate(wrap(fig, rest, 1.4, TEXT_SIZE, ", "), (0, 0.5), xycoords="axes fraction", xytext=(-28, 0),
                        textcoords="offset points", ha="right", va="center", fontsize=TEXT_SIZE)
        title = f"{dataset} {task}: decision regions" + (f" (class {positive_class} against the rest)"
                                                          if task == "binary" else "")
        written.append(save_figure(plt, fig, out / f"decision_regions_{dataset}_{task}.png", title,
                                   note=seeds_note(group)))
    return written


def _grid(group: pd.DataFrame) -> tuple[list[tuple[int, int]], list[str], list[str]]:
    """Each run's panel (row, column), the rows' names and the columns': the heads as columns and what
    else sets runs apart as rows where both vary (a missing pair leaves its panel empty); otherwise up
    to four panels a row, in order, the rows unnamed ([""])."""
    heads, rests = group["tags.head"].astype(str), short_labels(group, without=("tags.head",))
    if heads.nunique() > 1 and rests.nunique() > 1:
        cols, rows = sorted(heads.unique(), key=natural), sorted(rests.unique(), key=natural)
        return [(rows.index(r), cols.index(h)) for h, r in zip(heads, rests)], rows, cols
    width = min(len(group), 4)
    return [divmod(i, width) for i in range(len(group))], [""] * -(-len(group) // width), [""] * width


def binary_colours(positive_class: int) -> list[str]:
    """[the rest, the positive class]: grey, and the positive class's tab10 colour (as in the
    multi-class picture)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    return ["#9e9e9e", to_hex(colormaps["tab10"](positive_class % 10))]


def point_colours(y: np.ndarray, positive_class: int) -> list[str]:
    """Each point's colour in a binary picture: its class is the positive one, or the rest."""
    rest, positive = binary_colours(positive_class)
    return [positive if label == positive_class else rest for label in np.asarray(y).reshape(-1)]


def seeds_note(shown: pd.DataFrame) -> str:
    """What a picture of one_per_group's runs says about seeds: nothing where each config ran once."""
    low, high = shown["seeds"].min(), shown["seeds"].max()
    if high <= 1:
        return ""
    count = low if low == high else f"{low}-{high}"
    return f"Each config drawn from its lowest seed's run ({count} seeds per config)."


class Styles:
    """A figure's lines told apart by two factors: colour for one (the head, where heads differ), line
    style for the other (whatever else sets a line apart), each with its own short legend below the
    figure, so that 24 lines read from 4 colours and 6 dashes rather than from 24 long labels. Where
    only one factor varies, it takes the colours."""

    def __init__(self, colours: Iterable[str], styles: Iterable[str]):
        colours, styles = sorted(set(colours), key=natural), sorted(set(styles), key=natural)
        self.varies = (len(colours) > 1 or len(styles) == 1, len(styles) > 1)
        self.swapped = len(colours) == 1 and len(styles) > 1
        if self.swapped:
            colours, styles = styles, colours
        self.colours = dict(zip(colours, _palette(len(colours))))
        self.styles = {s: (LINESTYLES[i % len(LINESTYLES)], None if i < len(LINESTYLES) else
                           MARKERS[(i // len(LINESTYLES) - 1) % len(MARKERS)]) for i, s in enumerate(styles)}

    def name(self, colour: str, style: str) -> str:
        """A line's name in a note: its values of the factors that vary, in short words."""
        return ", ".join(part for part, varies in zip((colour, style), self.varies) if varies and part)

    def line(self, colour: str, style: str) -> dict[str, Any]:
        """ax.plot's keywords for the line of these two values."""
        if self.swapped:
            colour, style = style, colour
        linestyle, marker = self.styles[style]
        return {"color": self.colours[colour], "linestyle": linestyle, "marker": marker, "markersize": 4}

    def keys(self) -> list[Key]:
        """The legends: the colours (if more than one), then the styles (if more than one)."""
        from matplotlib.lines import Line2D

        keys = []
        if len(self.colours) > 1:
            keys.append(([Line2D([], [], color=c, linewidth=2) for c in self.colours.values()], list(self.colours)))
        if len(self.styles) > 1:
            keys.append(([Line2D([], [], color="0.2", linestyle=ls, marker=m, markersize=4)
                          for ls, m in self.styles.values()], list(self.styles)))
        return keys


def natural(text: str) -> tuple:
    """A sort key that orders the numbers in a label by value: `lr 0.003` before `lr 0.01`, `3 epochs`
    before `10 epochs`."""
    parts = re.split(r"(\d+(?:\.\d+)?(?:e-?\d+)?)", text)
    return tuple(float(part) if i % 2 else part for i, part in enumerate(parts))


def _palette(n: int) -> list:
    from matplotlib import colormaps

    name = "tab10" if n <= 10 else "tab20"
    return [colormaps[name](i % colormaps[name].N) for i in range(n)]


def identical(series: dict[Any, np.ndarray]) -> list[list[Any]]:
    """The labels whose values coincide, in sets of two or more, in order: to 12 significant digits,
    so that means over the same seeds summed in another order still coincide."""
    sets: dict[tuple, list[Any]] = {}
    for label, values in series.items():
        digits = tuple(f"{v:.12g}" for v in np.asarray(values, dtype=np.float64).reshape(-1))
        sets.setdefault(digits, []).append(label)
    return [labels for labels in sets.values() if len(labels) > 1]


def draw_lines(ax, lines: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]], styles: Styles,
               points: bool = False) -> list[list[tuple[str, str]]]:
    """One line per (colour value, style value), styled by `styles`. A line identical to one drawn
    before it is drawn as hollow markers of its own colour over that one, so that both show; returns
    the identical sets (for Twins). A line of one point is a marker; `points`: every point is (a
    sweep's values, where epochs are many)."""
    same = identical({key: np.concatenate([np.asarray(x, float), np.asarray(y, float)])
                      for key, (x, y) in lines.items()})
    later = {key: i for keys in same for i, key in enumerate(keys) if i}
    for key, (x, y) in lines.items():
        kwargs = styles.line(*key)
        if len(x) == 1 or points:
            kwargs["marker"] = kwargs["marker"] or "o"
        if key in later:
            i = later[key]
            kwargs.update(linestyle="none", marker=MARKERS[(i - 1) % len(MARKERS)], markersize=7, fillstyle="none",
                          markeredgewidth=1.2, markevery=(i - 1, max(1, len(x) // 8) * 2) if len(x) > 2 else None)
        elif kwargs["marker"] and not points:
            kwargs["markevery"] = max(1, len(x) // 8)
        ax.plot(x, y, alpha=0.9, linewidth=1.4, **kwargs)
    return same


class Twins:
    """A figure's identical lines, each identity said once in its note: `logit = sigmoid = softmax`
    where those colours (heads) coincide in every panel and line style where two of them are drawn;
    otherwise each pair with where it holds."""

    def __init__(self, styles: Styles):
        self.styles = styles
        self.drawn: dict[str, set[tuple[str, str]]] = {}
        self.same: dict[str, list[list[tuple[str, str]]]] = {}

    def add(self, panel: str, lines: Iterable[tuple[str, str]], same: list[list[tuple[str, str]]]) -> None:
        """A panel's lines (colour, style) and draw_lines' identical sets in it."""
        self.drawn.setdefault(panel, set()).update(lines)
        self.same.setdefault(panel, []).extend(same)

    def _where(self, a: str, b: str) -> tuple[set, set]:
        """Where colours a and b are both drawn, and where they coincide: (panel, style) pairs."""
        meet = {(panel, s) for panel, drawn in self.drawn.items() for c, s in drawn if c == a and (b, s) in drawn}
        same = {(panel, s) for panel, sets in self.same.items() for keys in sets for c, s in keys
                if c == a and (b, s) in keys}
        return meet, same

    def note(self) -> list[str]:
        """The identities, in short words: heads equal wherever they meet first, together; then pairs
        equal in some places only, with those; then lines of different styles that coincide."""
        colours = list(self.styles.styles if self.styles.swapped else self.styles.colours)  # the heads
        pairs = {(a, b): self._where(a, b) for i, a in enumerate(colours) for b in colours[i + 1:]}
        everywhere = {pair for pair, (meet, same) in pairs.items() if same and same == meet}
        said, done = [], set()
        for a in colours:  # colours that coincide wherever they meet, said together
            group = [a] + [b for b in colours if (a, b) in everywhere]
            whole = all(pairs[(x, y)][1] == pairs[(x, y)][0] for i, x in enumerate(group) for y in group[i + 1:])
            if len(group) > 1 and whole and a not in done:
                said.append(" = ".join(group))
                done.update(group)
                everywhere -= {(x, y) for x in group for y in group}
        for (a, b), (meet, same) in pairs.items():
            if same and (same != meet or (a, b) in everywhere):
                places = sorted({", ".join(filter(None, (p if len(self.drawn) > 1 else "", s))) for p, s in same},
                                key=natural)
                said.append(f"{a} = {b} ({'; '.join(places)})")
        across: dict[str, list[str]] = {}  # lines of different styles that coincide: by their names
        for panel, sets in self.same.items():
            for keys in sets:
                if len({s for _, s in keys}) > 1:
                    across.setdefault(" = ".join(self.styles.name(*k) for k in keys), []).append(panel)
        said += [what + ("" if len(where) == len(self.drawn) else f" ({', '.join(where)})")
                 for what, where in across.items()]
        return said


IDENTICAL = "Identical lines, each later one drawn as hollow markers over the first: "


def plot_curves(runs: pd.DataFrame, history: History, out: Path) -> list[Path]:
    """Per dataset and task: the training and validation loss per epoch of every variant and config,
    the heads as colours and what else sets a line apart as line styles; curves that coincide are
    drawn so that both show, and named once in the note under the figure."""
    written = []
    for (dataset, task), group in runs.groupby(["tags.dataset", "tags.task"], sort=True):
        group = one_per_group(group)
        lines = list(zip(group["tags.head"].astype(str), short_labels(group, without=("tags.head",))))
        styles = Styles(*zip(*lines))
        in_order = sorted(zip(lines, group.iterrows()), key=lambda item: tuple(map(natural, item[0])))
        epochs = {line: history(run) for line, (_, run) in in_order}  # drawn in the legends' order
        keys = [k for k in ("loss", "val_loss") if any(k in e for e in epochs.values())]
        plt, fig, axes = figure(1, len(keys), 4.6, 3.4)
        twins = Twins(styles)
        for ax, key in zip(axes[0], keys):
            shown = {line: (e["epoch"].to_numpy(), e[key].to_numpy()) for line, e in epochs.items() if key in e}
            twins.add(key, shown, draw_lines(ax, shown, styles))
            ax.set_xlabel("epoch")
            ax.set_ylabel(key)
            ax.set_yscale("log")
        said = twins.note()
        note = " ".join(filter(None, [IDENTICAL + "; ".join(said) + "." if said else "", seeds_note(group)]))
        written.append(save_figure(plt, fig, out / f"curves_{dataset}_{task}.png", f"{dataset} {task}: loss per epoch",
                                   styles.keys(), note))
    return written
