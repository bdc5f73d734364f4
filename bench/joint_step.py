"""Benchmark: a joint step and a contrastive step at the same batch, in one run, with the phase split.

    nice -n 10 .venv/bin/python bench/joint_step.py [--batch 8] [--steps 2] [--warmup 1] [--engine torch]
                                                   [--threads 2] [--out bench/results/joint_step.json] [overrides…]

One process, one model (pipelines/configs/joint.yaml + overrides, `--batch` real train products), one
rollout pool (`--engine`, default the config's). Contrastive steps (`TrainingModule`) and joint steps
(`RolloutSide.generate` + `JointTrainingModule` + sync, exactly the worker loop's calls) alternate, so
machine load that drifts hits both alike; `--warmup` rounds of each are run first and left out (the
joint warm-up pays the first bank embedding, reported apart). Prints and writes JSON: each step's
phases (gen, ref, bank, reward, update, sync, in seconds), the medians and the joint/contrastive ratio.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
NESTED = {"time_wait"}  # phases timed inside another phase: not added to a step's total


def train_rows(cfg, n: int) -> dict:
    """The first n train products (the loop's columns), as the Ray Data loader yields them."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from moon_ray.train.worker import BATCH_COLUMNS

    table = pq.read_table(Path(cfg.data.output_dir) / "products", columns=[*BATCH_COLUMNS, "split"])
    table = table.filter(pc.equal(table["split"], "train")).slice(0, n)
    return {c: np.array(table.column(c).to_pylist(), dtype=object) for c in BATCH_COLUMNS}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=2, help="measured steps of each kind")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured steps of each kind first")
    p.add_argument("--engine", default=None, help="rollout engine (default: the config's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "bench/results/joint_step.json"))
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)

    from moon_ray.config import RayConfig, load_config, with_absolute_paths
    from moon_ray.infrastructure.runtime import init_ray
    from moon_ray.infrastructure.timing import PhaseTimer
    from moon_ray.train.driver import start_rollout_pool
    from moon_ray.train.joint import JointTrainingModule, RolloutSide
    from moon_ray.train.task import TrainingModule, make_batch
    from moon_ray.train.worker import build_training, train_step

    engine = [f"rollout.engine={args.engine}"] if args.engine else []
    cfg = load_config(str(ROOT / "pipelines/configs/joint.yaml"),
                      [f"train.batch_size={args.batch}", *engine, *args.overrides])
    cfg = with_absolute_paths(cfg, ["data.output_dir"], search=[ROOT])
    torch.set_num_threads(args.threads)
    init_ray(RayConfig(num_cpus=max(2, args.threads), progress=False))
    pool = start_rollout_pool(cfg)
    model, temperature, opt, sched = build_training(cfg, torch.device("cpu"))
    rows = train_rows(cfg, args.batch)
    rng = random.Random(0)
    contrastive = TrainingModule(model, temperature, cfg)
    joint = JointTrainingModule(model, temperature, cfg)
    side = RolloutSide(pool, cfg, rank=0)
    side.start(model, 0, False)
    runs: dict[str, list[dict]] = {"contrastive": [], "joint": []}
    for step in range(args.warmup + args.steps):
        batch = make_batch(rows, rng, cfg.model.vision.image_size)
        timer = PhaseTimer()
        train_step(contrastive, opt, sched, batch, cfg, timer=timer)
        runs["contrastive"].append(timer.metrics())
        timer = PhaseTimer()
        extra = side.generate(model, batch, step, timer, rows)
        metrics = train_step(joint, opt, sched, batch, cfg, *extra, timer=timer)
        side.after_step(model, step + 1, timer)
        runs["joint"].append(timer.metrics() | {k: metrics[k] for k in ("grpo_clip_frac", "contrastive_group_std",
                                                                          "format_group_std") if k in metrics})
        print(f"step {step}: contrastive {runs['contrastive'][-1]}\n        joint {runs['joint'][-1]}", flush=True)
    import ray

    ray.get(pool.shutdown.remote())
    result = summarise(runs, args, cfg)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "steps"}, indent=1))
    return 0


def summarise(runs: dict[str, list[dict]], args, cfg) -> dict:
    def total(m: dict) -> float:  # time_wait lies inside time_gen (the trainer waiting for the pool)
        return sum(v for k, v in m.items() if k.startswith("time_") and k not in NESTED)

    measured = {k: v[args.warmup:] for k, v in runs.items()}
    medians = {k: statistics.median(total(m) for m in v) for k, v in measured.items()}
    phases = {k: {ph: statistics.median(m.get(ph, 0.0) for m in v) for ph in sorted({p for m in v for p in m})
                  if ph.startswith("time_")} for k, v in measured.items()}
    r = cfg.rollout
    return {"batch": args.batch, "measured_steps": args.steps, "warmup_steps": args.warmup, "threads": args.threads,
            "engine": r.engine, "group_size": r.group_size, "max_tokens": r.max_tokens, "embed_trace": r.embed_trace,
            "grpo_passes": r.grpo_epochs * r.grpo_minibatches, "kl_coef": r.kl_coef, "bank_size": r.bank_size,
            "precision": cfg.train.precision, "median_step_s": medians, "median_phases_s": phases,
            "joint_over_contrastive": medians["joint"] / medians["contrastive"],
            "warmup_joint_phases_s": runs["joint"][: args.warmup], "steps": runs}


if __name__ == "__main__":
    sys.exit(main())
