"""Faults in a real run: a Ray Train worker process killed (SIGKILL) mid-run; with train.max_failures the
group restarts from the latest checkpoint and the run ends at the right step, every step once in its
history. (A rollout actor killed mid-generation: tests/rollout/test_pool.py.)"""

from __future__ import annotations

import contextlib
import json
import os
import re
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


def registered_steps(storage) -> list[int]:
    """Steps of the checkpoints Ray Train's controller has registered (its manager snapshot in storage): only
    those can be restarted from. A checkpoint directory alone is not enough: the controller registers a
    reported checkpoint when it next polls the workers."""
    snapshots = list(storage.rglob("checkpoint_manager_snapshot.json"))
    try:
        text = snapshots[0].read_text() if snapshots else ""
    except OSError:  # replaced while read
        return []
    return sorted(int(m) for m in re.findall(r"checkpoint-(\d{6})", text))


def test_killed_trainer_worker_restarts_from_the_checkpoint_and_the_run_completes(ray_local, real_slice, tmp_path):
    tiny = write_tiny_lm(tmp_path / "tiny-lm", scale=2.0)
    out = tmp_path / "run"
    cfg = contrastive_cfg(tiny, real_slice, out, "train.steps=6", "train.checkpoint_every=2", "train.max_failures=1")
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(summary=run_train(cfg)), daemon=True)
    thread.start()
    # the controller has registered the first checkpoint: stop both DDP workers (nothing moves on while the
    # test looks), check the run is mid-way, kill one (a real process, from outside Ray), let the other go on
    wait_for(lambda: registered_steps(out / "ray"), 600, "a registered checkpoint")
    pids = wait_for(lambda: len(train_worker_pids()) == 2 and train_worker_pids(), 60, "two alive train workers")
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:  # (the controller is not stopped: it may be rewriting its snapshot, read until it parses)
        registered = wait_for(lambda: registered_steps(out / "ray"), 30, "a readable checkpoint snapshot")
        assert registered[-1] < 6, f"the run checkpointed step {registered[-1]} before the test could stop it"
        os.kill(pids[-1], signal.SIGKILL)  # (a SIGKILL ends a stopped process too)
    finally:
        for pid in pids:  # (the killed one may be gone already)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    thread.join(timeout=900)
    assert not thread.is_alive() and "summary" in box, box

    summary = box["summary"]
    # restarted once, from the latest checkpoint registered when the worker died
    assert summary["trainer_restarts"] in ([registered[-1]], [registered[-1] + 2]), (registered, summary["trainer_restarts"])
    assert [h["step"] for h in summary["history"]] == [1, 2, 3, 4, 5, 6]
    final = latest_checkpoint(out / "ray")
    assert json.loads((final / "moon_state.json").read_text())["step"] == 6
    assert json.loads((out / "export" / "MOON_MODEL").read_text())["step"] == 6
    assert pids[-1] not in train_worker_pids()
