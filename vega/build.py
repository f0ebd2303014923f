"""Build `vega/plots_page.html`: DVC's HTML page for `dvc plots show` with vega, vega-lite and
vega-embed embedded, so that the plots render with no network.

DVC's own page loads the three libraries from a CDN when it is opened. This one carries them
inline, at the versions pinned in `vega/package.json` and locked (with their integrity hashes) in
`vega/package-lock.json`. `.dvc/config` points `plots.html_template` at the built page, which is
committed: a fresh clone needs no node or npm to view its plots. Rebuild it after changing the
pins (`make plots-page`); `tests/test_plots_offline.py` checks that the page names the locked
versions.

    python vega/build.py            # npm ci into vega/node_modules, then write the page
    python vega/build.py --check    # exit 1 if the committed page differs from a fresh build
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGE = HERE / "plots_page.html"
# package -> its browser build (a UMD bundle: vega-lite needs the global `vega`, vega-embed both)
LIBRARIES = {
    "vega": "build/vega.min.js",
    "vega-lite": "build/vega-lite.min.js",
    "vega-embed": "build/vega-embed.min.js",
}
# DVC fills these with .replace() over the whole page: an embedded library must not contain them.
# `{scripts}` is left out of the page on purpose: DVC would put its CDN <script> tags there.
PLACEHOLDERS = ("{plot_divs}", "{refresh_tag}", "{scripts}")

HEAD = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
    <!--
    Built by vega/build.py from vega/package-lock.json; the libraries below are embedded so that the
    page renders offline (DVC's default page loads them from a CDN).
%(notices)s
    -->
"""

TAIL = """    <script>
        // DVC's plot divs call vegaEmbed(id, spec): draw every plot as SVG (crisp when zoomed, its text
        // selectable, and its marks visible to tests/test_plots_offline.py in the page's DOM)
        window.vegaEmbed = (function (embed) {
            return function (el, spec, opt) {
                return embed(el, spec, Object.assign({renderer: "svg"}, opt));
            };
        })(window.vegaEmbed);
    </script>
    <style>
        body {
            font-family: sans-serif;
        }
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def locked_versions() -> dict[str, str]:
    """The version package-lock.json pins for each library (and package.json must pin the same)."""
    lock = json.loads((HERE / "package-lock.json").read_text())
    wanted = json.loads((HERE / "package.json").read_text())["dependencies"]
    versions = {name: lock["packages"][f"node_modules/{name}"]["version"] for name in LIBRARIES}
    if versions != {name: wanted[name] for name in LIBRARIES}:
        raise SystemExit(f"package.json pins {wanted}, package-lock.json has {versions}: run npm install in vega/")
    return versions


def page(modules: Path) -> str:
    """The page, from the libraries installed under `modules` (a node_modules directory)."""
    versions = locked_versions()
    notices, scripts = [], []
    for name, build in LIBRARIES.items():
        package = json.loads((modules / name / "package.json").read_text())
        if package["version"] != versions[name]:
            raise SystemExit(f"{modules / name} is {package['version']}, the lock says {versions[name]}: npm ci")
        source = (modules / name / build).read_text(encoding="utf8")
        # the source map is not shipped: a browser's developer tools would look for it beside the page
        source = "\n".join(line for line in source.splitlines() if not line.startswith("//# sourceMappingURL="))
        for bad in ("</script", "<!--", "-->", *PLACEHOLDERS):
            if bad in source:
                raise SystemExit(f"{name}/{build} contains {bad!r}: it cannot be inlined as it is")
        digest = hashlib.sha256(source.encode()).hexdigest()
        notices.append(f"    {name} {versions[name]} ({name}/{build}, sha256 {digest}), license {package['license']}")
        scripts.append(f'    <script data-package="{name}" data-version="{versions[name]}">\n{source.strip()}\n    </script>\n')
    notices.append("    Copyright (c) 2015, University of Washington Interactive Data Lab (vega, vega-lite, vega-embed)")
    return HEAD % {"notices": "\n".join(notices)} + "".join(scripts) + TAIL


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed page instead of writing it")
    args = parser.parse_args()
    subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=HERE, check=True)
    built = page(HERE / "node_modules")
    if args.check:
        if PAGE.read_text(encoding="utf8") != built:
            print(f"{PAGE} differs from a fresh build: python vega/build.py", file=sys.stderr)
            return 1
        print(f"{PAGE} is up to date")
        return 0
    PAGE.write_text(built, encoding="utf8")
    print(f"wrote {PAGE} ({PAGE.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
