"""`python -m logitlab params [--check]`: regenerate params.yaml from conf/, or check that it agrees."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m logitlab")
    sub = parser.add_subparsers(dest="command", required=True)
    params = sub.add_parser("params", help="write params.yaml, the composition of conf/ that DVC tracks")
    params.add_argument("--root", type=Path, default=Path.cwd(), help="project root (default: .)")
    params.add_argument("--check", action="store_true", help="only check that params.yaml agrees with conf/")
    args = parser.parse_args(argv)

    from logitlab.config import PARAMS_FILE, params_drift, write_params

    root = args.root.resolve()
    if not (root / "conf" / "config.yaml").is_file():
        parser.error(f"{root} has no conf/config.yaml; pass the project root with --root")
    if args.check:
        drift = params_drift(root)
        if drift:
            print(f"{PARAMS_FILE} disagrees with conf/ at: {', '.join(drift)}; run `make params`", file=sys.stderr)
            return 1
        print(f"{PARAMS_FILE} agrees with conf/")
        return 0
    print(f"wrote {write_params(root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
