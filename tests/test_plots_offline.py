"""`dvc plots show` renders offline: its page (vega/plots_page.html, set as `plots.html_template` in
.dvc/config) embeds vega, vega-lite and vega-embed. The page DVC writes from the committed history
files is opened in headless Chromium (Debian's package) inside a network namespace of its own, which
has nothing but a loopback that is down. Every plot DVC declares must hold an SVG with drawn marks;
DVC's default page, which loads the libraries from a CDN, must draw none there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from helpers import PYTHON, ROOT, copy_project, ensure_debian, run, subprocess_env

CHROMIUM = Path("/usr/bin/chromium")
DVC = str(Path(PYTHON).parent / "dvc")
PAGE = ROOT / "vega" / "plots_page.html"
LIBRARIES = ("vega", "vega-lite", "vega-embed")
DRAWS = re.compile(r"[LHVCSQTA]", re.IGNORECASE)  # an SVG path command that draws (not M, Z)
# the div DVC writes per data plot (dvc_render's VegaRenderer.DIV): its id is the plot's
VEGA_DIV = re.compile(r'<div id = "([^"]+)">\s*<script type = "text/javascript">\s*var spec = ')


def test_page_embeds_the_locked_libraries():
    """The committed page carries the versions vega/package-lock.json pins, fetches no script, and
    is the page .dvc/config names."""
    page = PAGE.read_text(encoding="utf8")
    lock = json.loads((ROOT / "vega" / "package-lock.json").read_text())
    for name in LIBRARIES:
        version = lock["packages"][f"node_modules/{name}"]["version"]
        assert f'<script data-package="{name}" data-version="{version}">' in page, f"rebuild: python vega/build.py ({name} {version})"
    assert not re.search(r"<script[^>]*\ssrc=", page)
    assert "{plot_divs}" in page and "{scripts}" not in page  # DVC would put its CDN <script> tags at {scripts}
    config = subprocess.run([DVC, "config", "plots.html_template"], cwd=ROOT, capture_output=True, text=True,
                            check=True, env=subprocess_env()).stdout.strip()
    assert (ROOT / ".dvc" / config).resolve() == PAGE


class PlotMarks(HTMLParser):
    """Per plot div (by id): how many <svg> and <canvas> elements it holds and how many drawn marks:
    paths in a vega mark group that draw more than a move (a line of one point, `M150,100Z`, draws
    nothing: a one-epoch history has to show as a point)."""

    def __init__(self, ids: set[str]):
        super().__init__()
        self.ids = ids
        self.found = {i: {"svg": 0, "canvas": 0, "marks": 0} for i in ids}
        self.current: str | None = None
        self.depth = 0  # open <div>s inside the current plot div
        self.in_mark = 0  # open <g> elements inside a vega mark group (class "mark-... role-mark")

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if self.current is None:
            if tag == "div" and a.get("id") in self.ids:
                self.current, self.depth = a["id"], 0
            return
        counts = self.found[self.current]
        if tag == "div":
            self.depth += 1
        elif tag in ("svg", "canvas"):
            counts[tag] += 1
        elif tag == "g" and (self.in_mark or "role-mark" in (a.get("class") or "")):
            self.in_mark += 1
        elif tag == "path" and self.in_mark and DRAWS.search(a.get("d") or ""):
            counts["marks"] += 1

    def handle_endtag(self, tag):
        if self.current is None:
            return
        if tag == "g" and self.in_mark:
            self.in_mark -= 1
        elif tag == "div":
            if self.depth == 0:
                self.current = None
            else:
                self.depth -= 1


def rendered_dom(page: Path, tmp: Path) -> str:
    """The page's DOM after its scripts ran, from headless Chromium with no network at all."""
    profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp))
    isolate = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--map-root-user", "--net"]
    cmd = [*isolate, str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom", page.as_uri()]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # only on a timeout: stop the one we started
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, f"chromium exited {proc.returncode}:\n{err[-3000:]}"
    return out


def plots_in(page: Path, tmp: Path) -> dict[str, dict]:
    """Each data plot div DVC wrote into `page`, with what Chromium drew in it."""
    ids = set(VEGA_DIV.findall(page.read_text(encoding="utf8")))
    parser = PlotMarks(ids)
    parser.feed(rendered_dom(page, tmp))
    return parser.found


@pytest.mark.slow  # a real app or server in a subprocess
def test_dvc_plots_show_renders_offline(tmp_path):
    ensure_debian(["chromium"], [CHROMIUM])
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is missing: no way to take the network away")
    project = copy_project(tmp_path / "project")
    env = subprocess_env()
    plots = yaml.safe_load((project / "dvc.yaml").read_text())["plots"]
    declared = {plot_id for p in plots if isinstance(p, dict) for plot_id in p}  # the histories' plots
    assert len(declared) >= 2

    # what a user runs: the page from .dvc/config
    run([DVC, "plots", "show", "-o", "offline"], cwd=project, env=env)
    offline = plots_in(project / "offline" / "index.html", tmp_path)
    assert set(offline) == declared, f"every declared plot on the page: {sorted(offline)} vs {sorted(declared)}"
    blank = {i: c for i, c in offline.items() if not (c["svg"] and c["marks"])}
    assert not blank, f"plots with nothing drawn offline: {blank}"
    print(f"{len(offline)} plots rendered offline, {sum(c['marks'] for c in offline.values())} marks")

    # the same plots in DVC's default page (libraries from a CDN): with no network, nothing draws
    run([DVC, "config", "--unset", "plots.html_template"], cwd=project, env=env)
    run([DVC, "plots", "show", "-o", "default"], cwd=project, env=env)
    default_page = project / "default" / "index.html"
    assert "cdn.jsdelivr.net/npm/vega" in default_page.read_text(encoding="utf8")
    default = plots_in(default_page, tmp_path)
    assert set(default) == set(offline)
    drawn = {i: c for i, c in default.items() if c["svg"] or c["canvas"] or c["marks"]}
    assert not drawn, f"DVC's CDN page drew plots with no network: {drawn}"
