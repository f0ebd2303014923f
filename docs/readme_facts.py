"""The README's facts, generated into README.md by cog from the files they come from:

- the model registry (its champions, aliases, what `make serve` answers): docs/registry.json, a
  snapshot of the registry `make repro` built, which `python docs/readme_facts.py` (part of `make
  docs-images`, a maintainer's command) reads from the project's store (mlflow.db), then it runs
  `cog -r README.md`;
- the precision table: docs/precision.json, the runs of the README's precision sweep, read by
  `python docs/readme_facts.py --precision sqlite:///<the sweep's store>`, with the processor's name;
- the default `make repro`'s results table and the numbers said about it: report/summary.csv;
- the numerics study's differences: docs/study/study.csv (the study's report);
- the benchmark's table: benchmarks/results.json, as `python benchmarks/bench.py --markdown` prints it.

README.md's blocks between `[[[cog` and `[[[end]]]` call the functions below. `cog --check`
(tests/test_readme_facts.py) fails while the README disagrees with any of those files, and the same
test checks docs/registry.json against metrics/*.json, which `make repro` writes and git keeps.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = ROOT / "docs" / "registry.json"
PRECISION = ROOT / "docs" / "precision.json"  # the README's precision sweep, as `--precision STORE` read it
SERVED = "logitlab-mnist-25-15-relu"   # the model `make serve` serves (its @champion)


def snapshot(tracking_uri: str) -> dict[str, Any]:
    """The registry at `tracking_uri`: {name: {"champion": alias, "aliases": {alias: {...}}}}, and
    what @champion of SERVED answers for the first MNIST test digit."""
    import mlflow
    import numpy as np

    from logitlab.serving.registry import CHAMPION, RANKED_BY, TAG_FROM_LOGITS, TAG_LOSS, TAG_VARIANT

    client = mlflow.MlflowClient(tracking_uri)
    models: dict[str, Any] = {}
    for model in sorted(client.search_registered_models(), key=lambda m: m.name):
        aliases = {}
        for alias, version in sorted(model.aliases.items()):
            if alias == CHAMPION:
                continue
            tags = client.get_model_version(model.name, version).tags
            aliases[alias] = {"version": str(version), "variant": tags[TAG_VARIANT], RANKED_BY: float(tags[TAG_LOSS]),
                              "from_logits": tags[TAG_FROM_LOGITS] == "True"}
        champion = next(a for a, v in aliases.items() if v["version"] == str(model.aliases[CHAMPION]))
        models[model.name] = {"champion": champion, "aliases": aliases}
    mlflow.set_tracking_uri(tracking_uri)
    x = np.load(ROOT / "data" / "processed" / "mnist.npz")["x_test"][:1]
    answer = mlflow.pyfunc.load_model(f"models:/{SERVED}@{CHAMPION}").predict(x)
    rows = [{k: int(v) if k == "class" else float(v) for k, v in row.items()} for row in answer.to_dict("records")]
    return {"models": models, "served": {"model": SERVED, "alias": CHAMPION, "first_test_digit": rows}}


PRECISION_COLUMNS = {"params.precision": "precision", "params.model.head": "head",
                     "tags.numerics.train_loss_path": "loss path", "metrics.test_loss_f64": "test loss (float64)",
                     "metrics.test_accuracy": "accuracy", "metrics.prob_exact0_count": "probabilities exactly 0",
                     "metrics.prob_exact1_count": "exactly 1"}


def precision_snapshot(tracking_uri: str) -> dict[str, Any]:
    """The README's precision sweep (its command is in the README), from its runs in `tracking_uri`,
    with the processor it ran on: exact 0s and 1s depend on the CPU's kernels."""
    import platform
    import time

    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="attributes.status = 'FINISHED'")
    runs = runs[runs["tags.logitlab.variant"].notna()]
    rows = [{label: row[column] for column, label in PRECISION_COLUMNS.items()} for _, row in runs.iterrows()]
    order = {"float32": 0, "mixed_float16": 1, "mixed_bfloat16": 2}
    rows.sort(key=lambda r: (order.get(r["precision"], 9), ["logit", "softmax", "softmax_strict"].index(r["head"])))
    processor = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.machine())
    return {"processor": processor, "date": time.strftime("%Y-%m-%d"), "runs": rows}


def precision_table() -> None:
    """The precision sweep's table, and the machine it ran on."""
    data = json.loads(PRECISION.read_text())
    labels = list(PRECISION_COLUMNS.values())
    lines = ["| " + " | ".join(labels) + " |", "|" + "---|" * len(labels)]
    for r in data["runs"]:
        cells = [r["precision"], r["head"], r["loss path"], f"{r['test loss (float64)']:.4f}", f"{r['accuracy']:.4f}",
                 f"{r['probabilities exactly 0']:.0f}", f"{r['exactly 1']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    loss = {(r["precision"], r["head"]): r["test loss (float64)"] for r in data["runs"]}
    mixed = [p for p in ("mixed_float16", "mixed_bfloat16") if (p, "logit") in loss and (p, "softmax") in loss]
    compared = "; ".join(f"{p.removeprefix('mixed_')}: logit {loss[(p, 'logit')]:.4f}, softmax "
                         f"{loss[(p, 'softmax')]:.4f}" for p in mixed)
    lines.append(f"\n*One run each, on {data['processor']} with 2 cores ({data['date']}). The honest test loss "
                 f"under mixed precision here ({compared}): which head ends lower changes from run to run and "
                 "machine to machine. The counts of exact 0s and 1s and the mixed-precision digits depend on the "
                 "CPU's kernels: on another processor they differ.*")
    _out("\n".join(lines))


RESULTS = ROOT / "report" / "summary.csv"   # make repro's report
RESULT_COLUMNS = {"dataset": "dataset", "task": "task", "head": "head", "trainer": "trainer",
                  "train_loss_path": "loss path", "test_loss": "test loss", "test_accuracy": "accuracy",
                  "output_min": "out min", "output_max": "out max", "prob_min": "p min", "prob_max": "p max",
                  "test_loss_f64": "loss f64", "loss_err_probs_max": "err probs max",
                  "prob_clip_band_fraction": "in clip band", "probs_sum_max_error": "Σp − 1 max",
                  "argmax_tie_fraction": "argmax ties"}


def _results():
    import pandas as pd

    return pd.read_csv(RESULTS)


def results_table() -> None:
    """The default `make repro`'s results: report/summary.csv, these columns, renamed."""
    table = _results()[list(RESULT_COLUMNS)].rename(columns=RESULT_COLUMNS)
    _out(table.to_markdown(index=False, floatfmt=".4g"))


def results_notes() -> None:
    """What the results table says, its numbers read from it."""
    runs = _results()

    def row(dataset: str, task: str, head: str, trainer: str = "fit") -> Any:
        match = runs[(runs.dataset == dataset) & (runs.task == task) & (runs["head"] == head)
                     & (runs.trainer == trainer)]
        return match.iloc[0]

    logit, softmax = row("mnist", "multiclass", "logit"), row("mnist", "multiclass", "softmax")
    strict, sigmoid = row("mnist", "multiclass", "softmax_strict"), row("mnist", "multiclass", "sigmoid")
    strict_err = runs[runs["head"].str.endswith("_strict")].loss_err_probs_max.max()
    ties = round(sigmoid.argmax_tie_fraction * 10000)  # MNIST's 10,000 test digits
    _out(f"""2. At the reference settings, even the `_strict` heads, which really compute the loss from
   clipped probabilities, stay within {strict_err:.1g} of the float64 loss. They differ from the
   others only in the digits of training (MNIST accuracy {strict.test_accuracy:.4f} against
   {logit.test_accuracy:.4f}, test loss {strict.test_loss_f64:.4f} against {logit.test_loss_f64:.4f}).
3. The probabilities still hide information the logits keep: {softmax.prob_clip_band_fraction:.0%} of
   MNIST's softmax outputs are below 1e-7, inside the clip band, where the logits (down to
   {logit.output_min:.1f}) still rank them.
4. The sigmoid head is the real hazard. Keras trains it on softmax of its logits, but its own
   outputs sum to as much as {1 + sigmoid.probs_sum_max_error:.1f} (Σp − 1 up to
   {sigmoid.probs_sum_max_error:.1f}), and their honest loss is {sigmoid.test_loss_f64:.2f}, not the
   {sigmoid.test_loss:.3f} it trained on. Its accuracy trails the logit head's it trained exactly as
   ({sigmoid.test_accuracy:.4f} against {logit.test_accuracy:.4f}) by its argmax ties: {ties} test
   digit{"" if ties == 1 else "s"} with two classes at exactly 1.0, where argmax takes the first.""")


STUDY = ROOT / "docs" / "study" / "study.csv"   # the numerics study's differences (its report)


def study_differences() -> None:
    """The study's logit − other head differences whose 95% interval excludes zero; heads whose
    differences are identical (they trained alike) share a row."""
    import pandas as pd

    from logitlab.report.study import DIFF_METRICS, _diff_cell

    table = pd.read_csv(STUDY)
    excluded = table[[f"{m}_excludes_0" for m in DIFF_METRICS]].any(axis=1)
    lines = ["| dataset | precision | lr | other head | " + " | ".join(f"Δ {m.replace('_f64', ' (float64)').replace('_', ' ')}"
                                                                    for m in DIFF_METRICS) + " |",
             "|" + "---|" * (4 + len(DIFF_METRICS))]
    key = ["dataset", "precision", "lr", *(f"{m}_{part}" for m in DIFF_METRICS for part in ("diff", "ci95"))]
    for _, group in table[excluded].groupby(key, sort=True, dropna=False):
        first = group.iloc[0]
        cells = [re.sub(r"^(\*\*)?-", "\\1−", _diff_cell(first[f"{m}_diff"], first[f"{m}_ci95"],
                                                          first[f"{m}_excludes_0"])) for m in DIFF_METRICS]
        lines.append(f"| {first.dataset} | {first.precision} | {first.lr:g} | {', '.join(group.other)} | "
                     + " | ".join(cells) + " |")
    _out("\n".join(lines))


def bench_table() -> None:
    """benchmarks/results.json as `python benchmarks/bench.py --markdown` prints it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    _out(bench.markdown(json.loads(bench.RESULTS.read_text())))


def exps_example() -> None:
    """What `python -m logitlab exps --variant mnist-softmax --variant mnist-logit` prints in a fresh
    clone on main: the workspace's metrics files are main's, formatted by the command's own table."""
    from logitlab.stages.views import Row, table

    rows = [Row(experiment, variant, json.loads((ROOT / "metrics" / f"{variant}.json").read_text()))
            for variant in ("mnist-softmax", "mnist-logit") for experiment in ("workspace", "main")]
    _out("\n".join(["```text", "$ python -m logitlab exps --variant mnist-softmax --variant mnist-logit",
                    *table(rows), "```"]))


def _load() -> dict[str, Any]:
    return json.loads(REGISTRY.read_text())


def _out(text: str) -> None:
    import cog  # only inside cog

    cog.outl(text)


def registry_table() -> None:
    """Each registered model, its @champion, and each head's alias with its test_loss_f64."""
    lines = ["| registered model | @champion | each alias's `test_loss_f64` (its variant) |", "|---|---|---|"]
    for name, model in _load()["models"].items():
        ranked = sorted(model["aliases"].items(), key=lambda item: (item[1]["test_loss_f64"], item[0]))
        losses = ", ".join(f"`@{alias}` {v['test_loss_f64']:.10g} ({v['variant']})" for alias, v in ranked)
        lines.append(f"| `{name}` | `@{model['champion']}` | {losses} |")
    _out("\n".join(lines))


def served_model() -> None:
    """The served model's champion alias, in a sentence."""
    served = _load()["served"]
    champion = _load()["models"][served["model"]]["champion"]
    _out(f"The first test digit is a 7; `models:/{served['model']}@{served['alias']}` (`@{champion}`, after "
         "`make repro` here) answers:")


def served_answer() -> None:
    """The scoring server's JSON for the first test digit, as `make serve` answers it."""
    _out("```json\n" + json.dumps({"predictions": _load()["served"]["first_test_digit"]}) + "\n```")


def unknown_alias() -> None:
    """The one line `python -m logitlab serve` prints for an alias the served model does not have."""
    served = _load()["served"]["model"]
    valid = ", ".join(sorted(["champion", *_load()["models"][served]["aliases"]]))
    _out(f"`logitlab serve: error: registered model '{served}' has no alias 'best'; valid: {valid}`.")


def main() -> int:
    import subprocess

    from logitlab.tracking.store import DEFAULT_DB

    if sys.argv[1:2] == ["--precision"]:  # the store of the README's precision sweep
        PRECISION.write_text(json.dumps(precision_snapshot(sys.argv[2]), indent=2) + "\n")
        print(f"wrote {PRECISION.relative_to(ROOT)}")
    db = ROOT / DEFAULT_DB
    if not db.is_file():
        print(f"readme_facts: error: {db} does not exist; run `make repro` first", file=sys.stderr)
        return 2
    REGISTRY.write_text(json.dumps(snapshot(f"sqlite:///{db}"), indent=2) + "\n")
    print(f"wrote {REGISTRY.relative_to(ROOT)}")
    return subprocess.run([sys.executable, "-m", "cogapp", "-r", "-I", str(ROOT / "docs"), str(ROOT / "README.md")],
                          cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
