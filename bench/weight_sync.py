"""Benchmark: trainer -> rollout actors weight sync latency (object-store broadcast on CPU).

    .venv/bin/python bench/weight_sync.py [--actors 1 2 4] [--engine torch] [--out bench/results/weight_sync.json]

The trainer side is SmolLM2-135M with LoRA adapters (the default LoRA config, adapters randomised
so the merge is real work). For 1, 2 and 4 rollout actors (each holding the model in an engine) and
both payloads — `adapter` (LoRA A/B only; the torch engine copies them into its live, unmerged PEFT
adapters, or with --merge-on-actor merges them into cached base weights) and `merged` (LoRA merged
into the full matrices on the trainer) — it times the sync: one `ray.put`, every actor pulls and loads.
Targets: 4 actors ≤ 1.5× one actor; LoRA ≤ 100 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import ray
import torch

from moon_ray.config import LMConfig
from moon_ray.models.language import load_language_model
from moon_ray.models.weights import smollm2_dir
from moon_ray.rollout.pool import RolloutWorker
from moon_ray.weight_sync.object_store import broadcast


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--engine", default="torch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--merge-on-actor", action="store_true", help="actors without live adapters (merge A/B on arrival)")
    ap.add_argument("--out", default="bench/results/weight_sync.json")
    args = ap.parse_args()
    ray.init(num_cpus=2, include_dashboard=False)
    lm_cfg = LMConfig()
    lm, _ = load_language_model(lm_cfg)
    with torch.no_grad():
        for n, p in lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    kwargs = {"model_dir": str(smollm2_dir()), "threads": 1}
    if args.engine == "torch" and not args.merge_on_actor:
        kwargs["lora"] = {"r": lm_cfg.lora.r, "alpha": lm_cfg.lora.alpha, "targets": list(lm_cfg.lora.targets)}
    actors = [ray.remote(RolloutWorker).options(num_cpus=0.25).remote(args.engine, kwargs) for _ in range(max(args.actors))]
    ray.get([a.info.remote() for a in actors])
    rows, version = [], 0
    for mode in ("adapter", "merged"):
        for n in args.actors:
            times = []
            for _ in range(args.repeats + 1):  # the first is a warm-up (adapter mode reads base weights once)
                version += 1
                times.append(broadcast(lm, actors[:n], version, mode))
            steady = times[1:]
            rows.append({"mode": mode, "actors": n, "median_ms": round(1000 * statistics.median(t["sync_s"] for t in steady), 1),
                         "mb": round(steady[0]["bytes"] / 1e6, 1), "tensors": steady[0]["tensors"]})
            print(rows[-1])
    by = {(r["mode"], r["actors"]): r["median_ms"] for r in rows}
    hi, lo = max(args.actors), min(args.actors)
    result = {
        "benchmark": "weight_sync", "transport": "object_store", "engine": args.engine, "rows": rows,
        "actor_adapters": "live PEFT adapters (A/B copied)" if "lora" in kwargs else "merged on arrival",
        "adapter_max_over_one": round(by[("adapter", hi)] / by[("adapter", lo)], 2),
        "merged_max_over_one": round(by[("merged", hi)] / by[("merged", lo)], 2),
        "adapter_one_actor_ms": by[("adapter", lo)],
        "targets": {"max_over_one": 1.5, "adapter_ms": 100},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
