"""Benchmark: the Ray Train step (2 DDP workers × 1 CPU) vs a plain single-process torch loop.

    .venv/bin/python bench/train_step.py [--steps 4] [--per-worker-batch 8] [--out bench/results/train_step.json] [overrides…]

Same model (the default config: SmolLM2 + EfficientNet-Lite0 with all MOON modules), same global batch
of real products (2 × per-worker batch) and the same losses on both sides. The single process uses
all CPU threads; each Ray worker gets 1 CPU and 1 thread and gathers the other's candidates. Warm-up
steps are excluded. Also reports the achieved FLOP/s of the single-process step (torch's FLOP
counter) against a fp32 matmul peak measured on the same machine. Prints and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from moon_ray.config import load_config, to_dict


def fixed_rows(cfg, n: int) -> dict:
    import numpy as np

    table = pq.read_table(Path(cfg.data.output_dir) / "products", columns=["id", "title", "image", "gender", "colour", "article_type", "brand"])
    table = table.slice(0, n)
    return {c: np.array(table.column(c).to_pylist(), dtype=object) for c in table.column_names}


def run_steps(cfg, rows, steps: int, warmup: int, rank_slice=None) -> tuple[float, float]:
    """(seconds for `steps` timed steps, FLOPs of one step) on this process."""
    from torch.utils.flop_counter import FlopCounterMode

    from moon_ray.train.task import TrainingModule, make_batch
    from moon_ray.train.worker import build_training, train_step

    model, temperature, opt, sched = build_training(cfg, torch.device("cpu"))
    module = TrainingModule(model, temperature, cfg)
    if rank_slice is not None:
        rows = {k: v[rank_slice] for k, v in rows.items()}
    batch = make_batch(rows, random.Random(0), cfg.model.vision.image_size)
    step_module = module
    if torch.distributed.is_initialized():
        from ray.train.torch import prepare_model

        step_module = prepare_model(module, parallel_strategy_kwargs={"find_unused_parameters": True})
    for _ in range(warmup):
        train_step(step_module, opt, sched, batch, cfg)
    flops = 0.0
    if rank_slice is None:
        with FlopCounterMode(display=False) as counter:
            train_step(step_module, opt, sched, batch, cfg)
        flops = float(counter.get_total_flops())
    t = time.perf_counter()
    for _ in range(steps):
        train_step(step_module, opt, sched, batch, cfg)
    return time.perf_counter() - t, flops


def ray_worker(config: dict) -> None:
    import ray.train

    from moon_ray.config import Config, build

    torch.set_num_threads(1)
    cfg = build(Config, config["cfg"])
    rank, b = ray.train.get_context().get_world_rank(), config["per_worker"]
    seconds, _ = run_steps(cfg, config["rows"], config["steps"], config["warmup"], slice(rank * b, (rank + 1) * b))
    # Ray Train V2 keeps only checkpointed reports in Result.metrics: each rank writes its time to a file
    Path(config["result_dir"], f"rank{rank}.json").write_text(json.dumps({"seconds": seconds}))
    ray.train.report({"seconds": seconds})


def matmul_peak(threads: int, n: int = 2048, reps: int = 10) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return reps * 2 * n**3 / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--per-worker-batch", type=int, default=8)
    ap.add_argument("--out", default="bench/results/train_step.json")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cpus = os.cpu_count() or 2
    workers = 2
    b = args.per_worker_batch
    cfg = load_config(None, ["ray.progress=false", f"train.batch_size={b * workers}", *args.overrides])
    rows = fixed_rows(cfg, b * workers)

    torch.set_num_threads(cpus)
    single_s, flops = run_steps(cfg, rows, args.steps, args.warmup)
    peak = matmul_peak(cpus)
    print(f"single process: {single_s:.2f} s for {args.steps} steps; {flops / 1e9:.1f} GFLOP/step; "
          f"matmul peak {peak / 1e9:.1f} GFLOP/s", flush=True)

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from moon_ray.infrastructure.runtime import init_ray

    init_ray(cfg.ray)
    wcfg = load_config(None, ["ray.progress=false", f"train.batch_size={b}", *args.overrides])
    result_dir = tempfile.mkdtemp(prefix="moon-ray-bench-")
    trainer = TorchTrainer(
        ray_worker,
        train_loop_config={"cfg": to_dict(wcfg), "rows": rows, "per_worker": b, "steps": args.steps,
                           "warmup": args.warmup, "result_dir": result_dir},
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"bench-{int(time.time())}", storage_path="/tmp/moon-ray-bench"),
    )
    trainer.fit()
    ray_s = max(json.loads(p.read_text())["seconds"] for p in Path(result_dir).glob("rank*.json"))
    samples = args.steps * b * workers
    result = {
        "benchmark": "train_step",
        "global_batch": b * workers,
        "steps": args.steps,
        "cpus": cpus,
        "single_process_samples_per_s": round(samples / single_s, 3),
        "ray_train_samples_per_s": round(samples / ray_s, 3),
        "ratio_ray_over_single": round(single_s / ray_s, 3),
        "target_ratio": 0.9,
        "step_gflop": round(flops / 1e9, 1),
        "single_process_gflop_per_s": round(flops * args.steps / single_s / 1e9, 2),
        "matmul_peak_gflop_per_s": round(peak / 1e9, 2),
        "fraction_of_peak": round(flops * args.steps / single_s / peak, 3),
        "model": {"embed_layers": cfg.model.lm.embed_layers, "pool_grid": cfg.model.vision.pool_grid,
                  "fusion": cfg.model.fusion, "residual": cfg.model.residual, "moe": cfg.model.moe},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
