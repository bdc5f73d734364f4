"""The quiet console: the terminal keeps what `say` writes; prints, warnings, raw fd writes and child
processes' output go to the log file; a failure restores the terminal and shows the log's tail."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import ROOT

SCRIPT = textwrap.dedent("""
    import os, subprocess, sys, warnings
    from pathlib import Path
    from tqdm import tqdm
    from moon_ray.infrastructure.console import QuietConsole, console, say
    with QuietConsole(Path(sys.argv[1])):
        say("phase one")
        print("a chatty print")
        warnings.warn("a deprecation notice")
        os.write(2, b"raw stderr bytes\\n")
        subprocess.run([sys.executable, "-c", "print('from a worker process')"], check=True)
        for _ in tqdm(range(3), desc="bar", file=console()):
            pass
        if sys.argv[2] == "fail":
            raise RuntimeError("boom")
    say("after the block")
""")


def run(tmp_path, mode: str) -> tuple[subprocess.CompletedProcess, str]:
    log = tmp_path / "job.log"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(log), mode], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    return proc, log.read_text()


def test_terminal_gets_phases_and_bars_the_log_gets_the_rest(tmp_path):
    proc, log = run(tmp_path, "ok")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "phase one" and "after the block" in proc.stdout
    assert "bar" in proc.stdout + proc.stderr  # tqdm on the terminal
    for noise in ("a chatty print", "a deprecation notice", "raw stderr bytes", "from a worker process"):
        assert noise in log and noise not in proc.stdout + proc.stderr, noise
    assert "phase one" not in log


def test_a_failure_restores_the_terminal_and_shows_the_log_tail(tmp_path):
    proc, log = run(tmp_path, "fail")
    assert proc.returncode == 1
    assert "RuntimeError: boom" in proc.stderr and "the last lines of" in proc.stderr
    assert "a chatty print" in proc.stderr  # the tail, shown with the traceback
    assert "after the block" not in proc.stdout
