"""The README's facts about the model registry, generated into README.md by cog from
docs/registry.json, a snapshot of the registry that `make repro` built.

- `python docs/readme_facts.py` (part of `make docs-images`, a maintainer's command) reads the
  project's store (mlflow.db): every registered model, each alias's version, variant and
  `test_loss_f64`, @champion, and the champion's answer for the first MNIST test digit; it writes
  docs/registry.json, then runs `cog -r README.md`.
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
