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
