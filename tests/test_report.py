"""The comparison table and the pictures: one row (one line, one panel) per variant and config,
seeds aggregated as mean, std and a 95% confidence interval."""

import os

import numpy as np
import pandas as pd
import pytest

from logitlab.errors import UserError
from helpers import ROOT
from logitlab.report.plots import Styles, Twins, draw_lines, identical, plot_curves, point_colours, seeds_note
from logitlab.report.table import (
    METRICS,
    VARIANT,
    config_labels,
    one_per_group,
    pipeline_runs,
    pipeline_variants,
    short,
    short_labels,
    summarize,
    to_markdown,
)
from logitlab.schema import compose


def fake_runs(*extra):
    """(head, seed, accuracy, lr) rows of one dataset: logit at two seeds, softmax_strict at one."""
    rows = []
    for head, seed, acc, lr in (("logit", "0", 0.90, "0.001"), ("logit", "1", 0.94, "0.001"),
                                ("softmax_strict", "0", 0.80, "0.001"), *extra):
        row = {"run_id": f"{head}{seed}{lr}", "params.seed": seed, "tags.numerics.train_loss_path": "logits",
               "tags.dataset": "blobs", "tags.task": "multiclass", "tags.head": head, "tags.trainer": "fit",
               "params.model.layers": "[25, 15]", "params.trainer.epochs": "10", "params.optimizer.lr": lr,
               "params.paths.models": f"/tmp/{seed}"}  # bookkeeping: differs, sets nothing apart
        row.update({f"metrics.{m}": np.nan for m in METRICS})
        row["metrics.test_accuracy"] = acc
        rows.append(row)
    return pd.DataFrame(rows)


def test_seeds_aggregate_as_mean_std_and_a_95_percent_interval():
    table = summarize(fake_runs())
    assert list(table["head"]) == ["logit", "softmax_strict"]
    logit = table.iloc[0]
    assert logit["seeds"] == "0 1" and logit["runs"] == 2 and logit["config"] == ""
    assert logit["test_accuracy"] == pytest.approx(0.92)
    std = np.std([0.90, 0.94], ddof=1)
    assert logit["test_accuracy_std"] == pytest.approx(std)
    assert logit["test_accuracy_ci95"] == pytest.approx(12.7062 * std / np.sqrt(2), rel=1e-4)  # t(0.975, 1 dof)
    assert np.isnan(table.iloc[1]["test_accuracy_std"]) and np.isnan(table.iloc[1]["test_accuracy_ci95"])
    assert set(VARIANT.values()) <= set(table.columns)


def test_runs_that_differ_in_any_config_value_stay_apart_in_the_table():
    """A sweep's second learning rate is a row of its own, named by what differs; runs of another
    dataset, where every run agrees, get no label."""
    mnist = fake_runs().assign(**{"tags.dataset": "mnist", "run_id": lambda f: "m" + f["run_id"]})
    runs = pd.concat([fake_runs(("logit", "0", 0.30, "0.2")), mnist], ignore_index=True)
    labels = config_labels(runs)
    assert list(labels[:4]) == ["optimizer.lr=0.001"] * 3 + ["optimizer.lr=0.2"]
    assert set(labels[4:]) == {""}
    table = summarize(runs).set_index(["dataset", "head", "config"])
    assert table.loc[("blobs", "logit", "optimizer.lr=0.001"), "test_accuracy"] == pytest.approx(0.92)
    assert table.loc[("blobs", "logit", "optimizer.lr=0.2"), "test_accuracy"] == 0.30
    assert table.loc[("mnist", "logit", ""), "runs"] == 2 and len(table) == 5
    assert "optimizer.lr=0.2" in to_markdown(summarize(runs))


def test_pictures_show_one_run_per_config_with_its_label_and_seed_count():
    runs = fake_runs(("logit", "0", 0.30, "0.2"))
    shown = one_per_group(runs.iloc[::-1])  # the lowest seed stands for its group, whatever the order
    assert sorted(shown["label"]) == ["logit, lr 0.001", "logit, lr 0.2", "softmax_strict, lr 0.001"]
    assert dict(zip(shown["label"], shown["seeds"])) == {"logit, lr 0.001": 2, "logit, lr 0.2": 1,
                                                         "softmax_strict, lr 0.001": 1}
    assert set(shown["run_id"]) == {"logit00.001", "logit00.2", "softmax_strict00.001"}
    assert seeds_note(shown) == "Each config drawn from its lowest seed's run (1-2 seeds per config)."
    assert seeds_note(shown[shown["seeds"] == 1]) == ""


def test_labels_are_short_words_for_what_differs_between_the_runs_shown():
    """Only what differs between the runs given, each value in its short words; a key with no short
    name is its last dotted part; `without` leaves out what a picture shows otherwise."""
    runs = fake_runs().assign(**{"params.model.layers": ["[784, 256]", "[25, 15]", "[25, 15]"],
                                 "params.trainer.epochs": ["1", "10", "10"],
                                 "params.trainer.validation_split": ["0.0", "0.1", "0.1"],
                                 "params.trainer.steps_per_execution": ["32", "1", "32"],
                                 "params.precision": ["mixed_float16", "float32", "float32"],
                                 "tags.trainer": ["gradient_tape", "fit", "fit"]})
    assert list(short_labels(runs)) == [
        "logit, GradientTape, float16, 784-256, 1 epoch, no val, steps_per_execution 32",
        "logit, fit, float32, 25-15, 10 epochs, val 0.1, steps_per_execution 1",
        "softmax_strict, fit, float32, 25-15, 10 epochs, val 0.1, steps_per_execution 32"]
    assert list(short_labels(runs.iloc[1:], without=("tags.head",))) == ["steps_per_execution 1",
                                                                         "steps_per_execution 32"]
    assert list(short_labels(runs.iloc[:1])) == [""]
    assert short("params.optimizer.lr", 0.01) == "lr 0.01" and short("params.precision", "mixed_bfloat16") == "bfloat16"
    assert short("params.dataset.fetch.timeout_s", "30") == "timeout_s 30"


def test_identical_lines_stay_visible_and_are_returned_for_the_note():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(1, 6)
    lines = {("softmax", ""): (x, 1 / x), ("logit", ""): (x, 1 / x), ("softmax_strict", ""): (x, 2 / x)}
    assert identical({k: v[1] for k, v in lines.items()}) == [[("softmax", ""), ("logit", "")]]
    assert identical({"a": np.array([0.00038]), "b": np.array([0.00037999999999999997])}) == [["a", "b"]], \
        "a mean summed in another order is the same mean"
    styles = Styles([h for h, _ in lines], [""])
    fig, ax = plt.subplots()
    same = draw_lines(ax, lines, styles)
    assert same == [[("softmax", ""), ("logit", "")]]
    first, second, third = ax.lines
    assert first.get_linestyle() == "-" and second.get_linestyle() == "None", "the later twin: markers only"
    assert second.get_marker() not in (None, "None", "") and second.get_fillstyle() == "none"
    assert second.get_color() != first.get_color() and third.get_linestyle() == "-"
    twins = Twins(styles)
    twins.add("loss", lines, same)
    assert twins.note() == ["logit = softmax"]
    plt.close(fig)


def test_twins_are_said_once_with_where_they_hold_when_not_everywhere():
    """Heads that coincide wherever both are drawn: once, without a place; heads that coincide in
    some panels or line styles only: with those."""
    styles = Styles(["logit", "softmax", "sigmoid"], ["fit", "GradientTape"])
    twins = Twins(styles)
    twins.add("loss", [(h, s) for h in ("logit", "softmax", "sigmoid") for s in ("fit", "GradientTape")],
              [[("softmax", "fit"), ("logit", "fit"), ("sigmoid", "fit")],
               [("softmax", "GradientTape"), ("logit", "GradientTape")]])
    twins.add("val_loss", [(h, "fit") for h in ("logit", "softmax", "sigmoid")],
              [[("softmax", "fit"), ("logit", "fit")]])
    assert twins.note() == ["logit = softmax", "logit = sigmoid (loss, fit)", "sigmoid = softmax (loss, fit)"]


def test_the_curves_picture_names_the_identical_curves(tmp_path):
    from PIL import Image

    runs = fake_runs()
    epochs = pd.DataFrame({"epoch": [1, 2, 3], "loss": [0.9, 0.5, 0.3], "val_loss": [1.0, 0.6, 0.4]})
    history = {"logit": epochs, "softmax_strict": epochs.assign(loss=[0.8, 0.6, 0.5])}
    seen = []

    def read(run):
        seen.append(run["label"])
        return history[run["tags.head"]]

    [png] = plot_curves(runs, read, tmp_path)
    assert png.name == "curves_blobs_multiclass.png" and Image.open(png).size[0] > 500
    assert sorted(seen) == ["logit", "softmax_strict"]


def two_epochs_apart(run):
    """A run's epochs: the softmax_strict curve apart from the logit one (module level: a drawing
    process gets it by reference)."""
    epochs = pd.DataFrame({"epoch": [1, 2, 3], "loss": [0.9, 0.5, 0.3], "val_loss": [1.0, 0.6, 0.4]})
    return epochs if run["tags.head"] == "logit" else epochs.assign(loss=[0.8, 0.6, 0.5])


def note_pid(folder):
    (folder / f"{os.getpid()}.pid").touch()
    return []


def refuse(path):
    raise UserError(f"{path} does not exist; run its stage first: dvc repro train@blobs-logit")


def test_the_pictures_drawn_in_two_processes_are_the_files_drawn_in_one(tmp_path):
    from logitlab.stages.report import draw

    runs = pd.concat([fake_runs(), fake_runs().assign(**{"tags.dataset": "moons"})], ignore_index=True)
    together, one, two = tmp_path / "together", tmp_path / "one", tmp_path / "two"
    for folder in (together, one, two):
        (folder / "pids").mkdir(parents=True)
    plot_curves(runs, two_epochs_apart, together)
    for folder, processes in ((one, 1), (two, 2)):
        tasks = [(plot_curves, (of_dataset, two_epochs_apart, folder)) for _, of_dataset in runs.groupby("tags.dataset")]
        draw([*tasks, (note_pid, (folder / "pids",))], processes)
    drawn = {folder: {p.name: p.read_bytes() for p in folder.glob("*.png")} for folder in (together, one, two)}
    assert sorted(drawn[together]) == ["curves_blobs_multiclass.png", "curves_moons_multiclass.png"]
    assert drawn[one] == drawn[two] == drawn[together], "the same bytes, one task per dataset, in one process or two"
    assert [p.stem for p in (one / "pids").iterdir()] == [str(os.getpid())]
    assert [p.stem for p in (two / "pids").iterdir()] != [str(os.getpid())], "drawn in another process"


def test_an_error_in_a_drawing_process_is_the_reports_own(tmp_path):
    from logitlab.stages.report import draw

    with pytest.raises(UserError, match=r"^history/blobs-logit.tsv does not exist; run its stage first: "):
        draw([(refuse, ("history/blobs-logit.tsv",)), (note_pid, (tmp_path,))], 2)


def test_binary_pictures_colour_the_configured_positive_class():
    y = np.array([0, 2, 1, 2])
    colours = point_colours(y, 2)
    assert colours[1] == colours[3] != colours[0] == colours[2]
    assert colours[1] == matplotlib_tab10(2)


def matplotlib_tab10(k):
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    return to_hex(colormaps["tab10"](k))


def test_precisions_stay_apart_and_runs_without_one_are_float32():
    runs = fake_runs()
    mixed = runs.iloc[[0]].assign(**{"params.precision": "mixed_float16", "metrics.test_accuracy": 0.5})
    table = summarize(pd.concat([runs, mixed], ignore_index=True))
    logit = table[table["head"] == "logit"].set_index("precision")
    assert logit.loc["float32", "test_accuracy"] == pytest.approx(0.92) and logit.loc["float32", "runs"] == 2
    assert logit.loc["mixed_float16", "test_accuracy"] == 0.5
    assert "mixed_float16" in to_markdown(table)


def test_markdown_shows_mean_plus_minus_the_interval():
    markdown = to_markdown(summarize(fake_runs()))
    assert "0.92 ± 0.25" in markdown  # 12.706 * 0.028 / sqrt(2)
    assert "| 0.8 " in markdown.replace("  ", " ")
    assert markdown.splitlines()[0].startswith("| dataset")


def test_the_pipeline_variants_are_the_dvc_matrices():
    names = [v.variant for v in pipeline_variants(compose(ROOT))]
    assert names[:4] == ["mnist-softmax", "mnist-logit", "mnist-softmax_strict", "mnist-sigmoid"]
    assert "blobs-binary-sigmoid_strict" in names and "mnist-logit-gradient_tape" in names
    assert len(names) == len(set(names)) == 16


def test_a_variant_without_files_names_its_stage(tmp_path):
    cfg = compose(ROOT, [f"paths.metrics={tmp_path}", f"paths.predictions={tmp_path}"])
    with pytest.raises(UserError, match=f"{tmp_path / 'mnist-softmax.json'} does not exist; run its stage first: "
                                        "dvc repro train@mnist-softmax"):
        pipeline_runs(cfg, ROOT)


def test_a_damaged_metrics_file_names_the_command_that_remakes_it(tmp_path):
    cfg = compose(ROOT, [f"paths.metrics={tmp_path}", f"paths.predictions={tmp_path}", "pipeline.datasets=[blobs]",
                         "pipeline.heads=[logit]", "pipeline.binary_heads=[]", "pipeline.gradient_tape.datasets=[]"])
    (tmp_path / "blobs-logit.json").write_text('{"test_loss": 0.1, "test_acc')
    with pytest.raises(UserError, match=r"blobs-logit.json is damaged \(.*\); remake it: dvc repro -f train@blobs-logit$"):
        pipeline_runs(cfg, ROOT)
