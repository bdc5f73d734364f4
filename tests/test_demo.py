"""CI: `moon-ray demo --fast` end to end in a subprocess (its own local Ray), as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SHARED_DATA


@pytest.mark.slow
def test_demo_fast_end_to_end(tmp_path):
    if not (SHARED_DATA / "styles.csv").exists():
        pytest.fail(f"the shared catalog is missing at {SHARED_DATA}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "moon_ray.cli", "demo", "--fast",
           f"data.catalog={SHARED_DATA / 'styles.csv'}", f"data.image_dir={SHARED_DATA / 'images'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=1500)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    report = Path(proc.stdout.strip().splitlines()[-1].removeprefix("report: "))
    assert report.exists(), tail
    text = report.read_text()
    for section in ("## Catalog", "## Joint training", "## Evaluation", "## Searches over HTTP"):
        assert section in text, section
    assert "input 300 = ok" in text and "frozen" in text
    assert (report.parent / "training.png").exists()


def test_demo_times_each_step_with_the_shared_timer(monkeypatch, tmp_path):
    """run_demo's wiring without the work: each step is timed under its name (infrastructure.timing), and
    the total covers them all."""
    import time

    import moon_ray.catalog.ingest as ingest
    import moon_ray.demo as demo
    import moon_ray.eval.evaluate as evaluate
    import moon_ray.eval.report as report
    import moon_ray.train.driver as driver

    def slow(result):
        def step(*args, **kwargs):
            time.sleep(0.05)
            return result
        return step

    written = {}
    monkeypatch.setattr(ingest, "run_preprocess", slow({"input": 1, "ok": 1, "rejected": 0, "splits": {}}))
    monkeypatch.setattr(driver, "run_train", slow({"export": str(tmp_path / "export"), "history": []}))
    monkeypatch.setattr(evaluate, "run_eval", slow({"output_dir": str(tmp_path / "eval")}))
    monkeypatch.setattr(report, "compare", slow("| table |"))
    monkeypatch.setattr(demo, "serve_and_search", slow([]))
    monkeypatch.setattr(demo, "write_report", lambda *a: written.update(times=a[5]) or tmp_path / "report.md")
    assert demo.run_demo(fast=True) == tmp_path / "report.md"
    times = written["times"]
    assert list(times) == ["preprocess", "train", "eval", "serve", "total"]
    assert times["preprocess"] >= 0.05 and times["eval"] >= 0.15  # two evaluations and the comparison
    assert times["total"] >= sum(v for k, v in times.items() if k != "total")
