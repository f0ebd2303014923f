"""The README's facts about the model registry and its precision table, generated into README.md
by cog from docs/registry.json, a snapshot of the registry that `make repro` built, and
docs/precision.json, the runs of the README's precision sweep.

- `python docs/readme_facts.py` (part of `make docs-images`, a maintainer's command) reads the
  project's store (mlflow.db): every registered model, each alias's version, variant and
  `test_loss_f64`, @champion, and the champion's answer for the first MNIST test digit; it writes
  docs/registry.json, then runs `cog -r README.md`.
- `python docs/readme_facts.py --precision sqlite:///<the sweep's store>` also reads the precision
  sweep's runs (the README gives its command) into docs/precision.json, with the processor's name.
- README.md's blocks between `[[[cog` and `[[[end]]]` call the functions below; `cog --check`
  (tests/test_readme_facts.py) fails while the README disagrees with docs/registry.json, and the
  same test checks docs/registry.json against metrics/*.json, which `make repro` writes and git keeps.
"""

from __future__ import annotations

import json
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
