"""Recorded run: a rollout actor killed mid-generation in a real joint run with the real vLLM actor.

    .venv/bin/python bench/rollout_faults.py [--steps 4] [--out bench/results/rollout_faults.json] [overrides…]

A short joint run (pipelines/configs/joint.yaml on the preprocessed catalog, SmolLM2 on a vLLM actor, small
batch) runs in a thread; a watcher finds the run's named pool, waits until step `--kill-after` is done and
an actor holds groups in flight, and SIGKILLs that actor's process from outside Ray. The pool re-queues its
groups on a replacement synced to the current weights (rollout.max_restarts); the run must end at its
step count with every step once in its history. Prints and writes JSON: the kill (pid, step, in-flight
groups), the pool's own record (restarts, re-queued groups, events), the steps and their times.
(The CI versions with the torch engine: tests/rollout/test_pool.py, tests/train/test_faults.py.)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["train.batch_size=4", "train.num_workers=1", "train.cpus_per_worker=1", "train.log_every=1",
         "train.eval_every=0", "train.checkpoint_every=100", "train.warmup_steps=0", "rollout.group_size=2",
         "rollout.max_tokens=16", "rollout.bank_size=32", "rollout.max_restarts=2", "ray.progress=false",
         "serve.index_after_export=false"]


def watch_and_kill(box: dict, after_step: int, timeout: float) -> None:
    """Kill the first actor seen with groups in flight once the run's history reaches `after_step`."""
    import ray

    from moon_ray.rollout.control import find_pool

    deadline = time.monotonic() + timeout
    pool = None
    while time.monotonic() < deadline and "summary" not in box:
        try:
            pool = pool or find_pool()[0]
            status = ray.get(pool.status.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - the pool is not up yet
            time.sleep(0.5)
            continue
        if status["generated_groups"] >= after_step * box["batch"]:
            busy = [a for a in status["actors"] if a["inflight_groups"] > 0]
            if busy:
                os.kill(busy[0]["pid"], signal.SIGKILL)
                box["kill"] = {"pid": busy[0]["pid"], "inflight_groups": busy[0]["inflight_groups"],
                               "generated_groups_before": status["generated_groups"], "version": status["version"],
                               "t": round(time.time(), 1)}
                print(f"killed rollout actor pid {busy[0]['pid']} with {busy[0]['inflight_groups']} groups in flight",
                      flush=True)
                return
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--kill-after", type=int, default=1, help="kill once this many steps' groups were generated")
    p.add_argument("--out", default=str(ROOT / "bench/results/rollout_faults.json"))
    p.add_argument("--output-dir", default=str(ROOT / "outputs/bench-rollout-faults"))
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)

    import shutil

    from moon_ray.config import load_config, with_absolute_paths
    from moon_ray.infrastructure.runtime import init_ray
    from moon_ray.train.driver import run_train

    shutil.rmtree(args.output_dir, ignore_errors=True)
    cfg = load_config(str(ROOT / "pipelines/configs/joint.yaml"),
                      [*SMALL, f"train.steps={args.steps}", f"train.output_dir={args.output_dir}", *args.overrides])
    cfg = with_absolute_paths(cfg, ["data.output_dir"], search=[ROOT])
    init_ray(cfg.ray)
    box: dict = {"batch": cfg.train.batch_size}
    watcher = threading.Thread(target=watch_and_kill, args=(box, args.kill_after, 3600), daemon=True)
    watcher.start()
    started = time.time()
    box["summary"] = run_train(cfg)
    summary = box["summary"]
    steps = [h["step"] for h in summary["history"]]
    result = {
        "what": "a real joint run (vLLM rollout actor, SmolLM2-135M) with its rollout actor SIGKILLed mid-generation",
        "engine": cfg.rollout.engine, "steps_wanted": args.steps, "steps_in_history": steps,
        "completed": steps == list(range(1, args.steps + 1)), "kill": box.get("kill"),
        "rollout_pool": summary.get("rollout_pool"), "seconds": round(time.time() - started, 1),
        "step_seconds": [round(sum(v for k, v in h.items() if k.startswith("time_") and k != "time_wait"), 1)
                         for h in summary["history"]],
        "version_lag": [h.get("version_lag") for h in summary["history"]],
        "settings": {"overrides": [*SMALL, *args.overrides], "config": "pipelines/configs/joint.yaml"},
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=1))
    return 0 if result["completed"] and result["kill"] else 1


if __name__ == "__main__":
    sys.exit(main())
