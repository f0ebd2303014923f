"""`make docs-images`: the README's pictures, from a finished `make repro` of this project.

A maintainer's command: it rewrites the committed images under docs/images/, so each is small and
stable (no run id or clock time in what the screenshots show where it can be avoided).

- the report's pictures, as `make repro` drew them (report/plots/): the heads' loss curves on MNIST
  and the decision regions on blobs;
- one run's own picture (models/mnist-logit/outputs.png), as its MLflow artifact view shows it;
- the MLflow UI, on this project's store (mlflow.db), screenshot by headless Chromium: the runs table
  grouped by nothing, and the experiment's Models tab. The UI runs on 127.0.0.1 for the time of the
  screenshots and is stopped by its pid.

- the numerics study's view (docs/study/plots/study_*.png), redrawn from the study's committed
  summary (docs/study/summary.csv, each config's mean over its seeds and 95% half-width), so it
  needs none of the study's 540 runs; the study's report draws the same view from the runs
  (`python pipelines/report.py report.runs=experiment tracking.experiment=numerics_study
  report.out_dir=docs/study`), with the training loss's error as a fourth row.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"
CHROMIUM = Path("/usr/bin/chromium")
COPIES = {  # docs/images/<name>: the file `make repro` writes
    "curves_mnist_multiclass.png": "report/plots/curves_mnist_multiclass.png",
    "decision_regions_blobs_multiclass.png": "report/plots/decision_regions_blobs_multiclass.png",
    "run_outputs_mnist-logit.png": "models/mnist-logit/outputs.png",
}
# Chromium's flags as root on a machine with no network but the loopback (see tests/test_plots_offline.py)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--force-device-scale-factor=1"]


def fail(message: str) -> None:
    print(f"make docs-images: error: {message}", file=sys.stderr)
    sys.exit(2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"the MLflow UI exited with {proc.returncode} before it answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    fail(f"the MLflow UI did not answer at {url} in {timeout:.0f} s")


# The tables' "Created" column says "3 minutes ago": hidden, so that a regenerated image differs only
# where the runs do (the grid's header and cells of one column share its col-id).
HIDE_CLOCK_COLUMNS = """() => {
  const rows = [...document.querySelectorAll('[role=row]')];
  for (const row of rows) {
    const cells = [...row.children];
    const at = cells.findIndex(c => c.textContent.trim().startsWith('Created'));
    if (at < 0) continue;
    const id = cells[at].getAttribute('col-id');
    if (id) {  // a grid whose cells name their column
      const style = document.createElement('style');
      style.textContent = `[col-id="${id}"] { visibility: hidden !important; }`;
      document.head.appendChild(style);
    } else {
      for (const r of rows) if (r.children[at]) r.children[at].style.visibility = 'hidden';
    }
  }
}"""


def screenshots(pages: dict[Path, str], size: tuple[int, int]) -> list[Path]:
    """Each page of `pages` (path: URL) in headless Chromium (Debian's, driven by Playwright), once
    its table has drawn; the MLflow Assistant's side panel, which opens by itself, is closed first."""
    from playwright.sync_api import Error, sync_playwright

    written = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS[1:])
        try:
            page = browser.new_page(viewport={"width": size[0], "height": size[1]})
            for path, url in pages.items():
                page.goto(url, wait_until="load")
                page.locator("[role=row]").nth(1).wait_for(timeout=60000)  # the table's first row drawn
                page.wait_for_timeout(1500)
                close = page.locator('[aria-label*="Close" i]').filter(has_not_text="run")
                if close.count():
                    try:
                        close.first.click(timeout=3000)
                    except Error:
                        pass
                page.evaluate(HIDE_CLOCK_COLUMNS)
                page.wait_for_timeout(500)
                page.screenshot(path=str(path))
                written.append(path)
        finally:
            browser.close()
    return written


def experiment_id(store: str, name: str = "logitlab") -> str:
    import mlflow

    experiment = mlflow.MlflowClient(store).get_experiment_by_name(name)
    if experiment is None:
        fail(f"no experiment {name!r} in {store}: run `make repro` first")
    return experiment.experiment_id


def mlflow_screenshots(out: Path) -> list[Path]:
    db = ROOT / "mlflow.db"
    if not db.is_file():
        fail(f"no tracking store at {db}: run `make repro` first")
    store = f"sqlite:///{db}"
    exp = experiment_id(store)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = open(Path(tmp) / "ui.log", "w")
        env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
        proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", store,
                                 "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(f"{base}/health", proc)
            return screenshots({out / "mlflow_runs.png": f"{base}/#/experiments/{exp}/runs?workflowType=machine_learning",
                                out / "mlflow_models.png": f"{base}/#/experiments/{exp}/models?workflowType=machine_learning"},
                               (1600, 720))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def study_view(study: Path) -> list[Path]:
    import pandas as pd

    from logitlab.report.study import plot_study, study_from_summary

    return plot_study(study_from_summary(pd.read_csv(study / "summary.csv")), study / "plots", summarized=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="make docs-images", description=__doc__.splitlines()[0])
    parser.add_argument("--no-screenshots", action="store_true", help="only the pictures `make repro` drew")
    args = parser.parse_args()
    missing = [source for source in COPIES.values() if not (ROOT / source).is_file()]
    if missing:
        fail(f"{', '.join(missing)} missing: run `make repro` first")
    if not args.no_screenshots and not CHROMIUM.exists():
        fail(f"{CHROMIUM} missing: apt-get install chromium (or pass --no-screenshots)")
    OUT.mkdir(parents=True, exist_ok=True)
    written = [Path(shutil.copyfile(ROOT / source, OUT / name)) for name, source in COPIES.items()]
    written += study_view(ROOT / "docs" / "study")
    if not args.no_screenshots:
        written += mlflow_screenshots(OUT)
    for path in written:
        print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
