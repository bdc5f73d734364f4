"""Faults in a real run: a Ray Train worker process killed (SIGKILL) mid-run; with train.max_failures the
group restarts from the latest checkpoint and the run ends at the right step, every step once in its
history. (A rollout actor killed mid-generation: tests/rollout/test_pool.py.)"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from moon_ray.train.checkpoint import latest_checkpoint
from moon_ray.train.driver import run_train
from tests.train.test_train_driver import contrastive_cfg
from tests.train.tiny_lm import write_tiny_lm


def train_worker_pids() -> list[int]:
    """This session's Ray Train worker processes: descendants of this process (its local Ray's raylet
    starts them) whose title is Ray's `ray::RayTrainWorker...`; other Rays on the machine are not ours."""
    import psutil

    pids = []
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if " ".join(proc.cmdline()).startswith("ray::RayTrainWorker"):
                pids.append(proc.pid)
        except psutil.Error:
            continue
    return pids


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"{what} did not happen within {timeout} s")


def test_killed_trainer_worker_restarts_from_the_checkpoint_and_the_run_completes(ray_local, real_slice, tmp_path):
    tiny = write_tiny_lm(tmp_path / "tiny-lm", scale=2.0)
    out = tmp_path / "run"
    cfg = contrastive_cfg(tiny, real_slice, out, "train.steps=6", "train.checkpoint_every=2", "train.max_failures=1")
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(summary=run_train(cfg)), daemon=True)
    thread.start()
    # the first checkpoint is in storage: kill one of the two DDP workers (a real process, from outside Ray)
    wait_for(lambda: list((out / "ray").rglob("step-000002/moon_state.json")), 600, "checkpoint of step 2")
    pids = wait_for(train_worker_pids, 60, "alive train workers")
    assert thread.is_alive(), "the run ended before the kill"
    os.kill(pids[-1], signal.SIGKILL)
    thread.join(timeout=900)
    assert not thread.is_alive() and "summary" in box, box

    summary = box["summary"]
    assert summary["trainer_restarts"] in ([2], [4])  # restarted once, from a checkpoint that existed
    assert [h["step"] for h in summary["history"]] == [1, 2, 3, 4, 5, 6]
    final = latest_checkpoint(out / "ray")
    assert json.loads((final / "moon_state.json").read_text())["step"] == 6
    assert json.loads((out / "export" / "MOON_MODEL").read_text())["step"] == 6
    assert pids[-1] not in train_worker_pids()
