"""Benchmark: trainer -> rollout actors weight sync latency (object-store broadcast; collective groups).

    .venv/bin/python bench/weight_sync.py [--actors 1 2 4] [--engine torch] [--out bench/results/weight_sync.json]
    .venv/bin/python bench/weight_sync.py --transport gloo --out bench/results/weight_sync_gloo.json
    .venv/bin/python bench/weight_sync.py --transport nccl --out bench/results/weight_sync_nccl.json   # GPUs

The trainer side is SmolLM2-135M with LoRA adapters (the default LoRA config, adapters randomised
so the merge is real work). For 1, 2 and 4 rollout actors (each holding the model in an engine) and
both payloads — `adapter` (LoRA A/B only; the torch engine copies them into its live, unmerged PEFT
adapters, or with --merge-on-actor merges them into cached base weights) and `merged` (LoRA merged
into the full matrices on the trainer) — it times the sync: one `ray.put`, every actor pulls and loads.
Targets: 4 actors ≤ 1.5× one actor; LoRA ≤ 100 ms.

`--transport gloo|nccl`: merged weights broadcast tensor by tensor over a Ray collective group
(moon_ray/weight_sync/collective.py, through the same transport interface). The trainer side is then an actor (a collective rank must be),
and every actor count gets fresh actors and a fresh sender (Ray's gloo groups cannot be re-made with
another size in the same process). nccl needs one GPU per rank: 1 + max(--actors) GPUs.
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
from moon_ray.weight_sync.transport import create_transport, weights_of


def row(mode: str, n: int, times: list[dict]) -> dict:
    steady = times[1:]  # the first is a warm-up (adapter mode reads base weights once; groups connect)
    out = {"mode": mode, "actors": n, "median_ms": round(1000 * statistics.median(t["sync_s"] for t in steady), 1),
           "mb": round(steady[0]["bytes"] / 1e6, 1), "tensors": steady[0]["tensors"]}
    print(out, flush=True)
    return out


def object_store_rows(lm, kwargs: dict, args) -> list[dict]:
    actors = [ray.remote(RolloutWorker).options(num_cpus=0.25).remote(args.engine, kwargs) for _ in range(max(args.actors))]
    ray.get([a.info.remote() for a in actors])
    rows, version = [], 0
    for mode in ("adapter", "merged"):
        for n in args.actors:
            times, transport = [], create_transport("object_store", mode=mode)
            for _ in range(args.repeats + 1):
                version += 1
                times.append(transport.send(weights_of(lm, mode), actors[:n], version))
            rows.append(row(mode, n, times))
    return rows


class Sender:
    """Rank 0 of the collective group (an actor, as a Ray Train worker would be)."""

    def __init__(self, lm, actors: list, backend: str):
        self.lm, self.actors = lm, actors
        self.transport = create_transport(backend)  # the group is made by the first send (the warm-up)
        if backend == "nccl":
            self.lm.cuda()

    def sync(self, version: int) -> dict:
        return self.transport.send(weights_of(self.lm, "merged"), self.actors, version)


def collective_rows(lm, kwargs: dict, args) -> list[dict]:
    gpus = 1 if args.transport == "nccl" else 0
    lm_ref, rows = ray.put(lm), []
    for n in args.actors:
        actors = [ray.remote(RolloutWorker).options(num_cpus=0.25, num_gpus=gpus).remote(args.engine, kwargs)
                  for _ in range(n)]
        ray.get([a.info.remote() for a in actors])
        sender = ray.remote(Sender).options(num_cpus=0.25, num_gpus=gpus).remote(lm_ref, actors, args.transport)
        rows.append(row("merged", n, [ray.get(sender.sync.remote(v)) for v in range(1, args.repeats + 2)]))
        for actor in (sender, *actors):
            ray.kill(actor)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--engine", default="torch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--merge-on-actor", action="store_true", help="actors without live adapters (merge A/B on arrival)")
    ap.add_argument("--transport", choices=["object_store", "gloo", "nccl"], default="object_store")
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
    if args.engine == "torch" and not args.merge_on_actor and args.transport == "object_store":
        kwargs["lora"] = {"r": lm_cfg.lora.r, "alpha": lm_cfg.lora.alpha, "targets": list(lm_cfg.lora.targets)}
    if args.transport == "object_store":
        rows = object_store_rows(lm, kwargs, args)
    else:
        rows = collective_rows(lm, kwargs, args)
    by = {(r["mode"], r["actors"]): r["median_ms"] for r in rows}
    hi, lo = max(args.actors), min(args.actors)
    result = {
        "benchmark": "weight_sync", "transport": args.transport, "engine": args.engine, "rows": rows,
        "actor_adapters": ("live PEFT adapters (A/B copied)" if "lora" in kwargs else "merged on arrival")
        if args.transport == "object_store" else "merged on the trainer, broadcast tensor by tensor",
        "merged_max_over_one": round(by[("merged", hi)] / by[("merged", lo)], 2),
        "targets": {"max_over_one": 1.5, "adapter_ms": 100},
    }
    if args.transport == "object_store":
        result["adapter_max_over_one"] = round(by[("adapter", hi)] / by[("adapter", lo)], 2)
        result["adapter_one_actor_ms"] = by[("adapter", lo)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
