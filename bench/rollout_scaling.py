"""Benchmark: throughput of the synchronous and asynchronous rollout loops with 1, 2 and 4 rollout actors,
and idle fractions.

    .venv/bin/python bench/rollout_scaling.py [--actors 1 2 4] [--steps 8] [--out bench/results/rollout_scaling.json]

Each step is the joint loop's synchronous shape: gen (the real RolloutPool: prompts split across Ray
actors) -> update (the trainer: a fixed sleep, `--update-s`) -> sync (a real object-store weight payload
of `--payload-mb`, put once, pulled and loaded by every actor through the pool). The engine is simulated
(moon_ray/rollout/simulated.py): a decoding step of up to `--batch` sequences is a sleep of `--token-s`,
so generation time is ceil(B·G/actors/batch) × max_tokens × token_s per actor. That isolates the pipeline's
scaling from this machine's 2 cores, on which real engines and trainers compete for the same CPUs; the
JSON says so. Reported per actor count: samples/s (B·G traces per step), the phase seconds, trainer idle
fraction (gen + sync over the step: the trainer waits for both) and rollout idle fraction (1 − each
actor's busy time, generating or loading, over the step time; mean over actors). The pools of every size
run side by side and their steps interleave (1, 2, 4, 1, 2, 4, ...), so load from other processes on the
machine falls on all sizes alike.

The asynchronous rows are the loop of `rollout.asynchronous=true` (train/joint.py AsyncRolloutSide) with
the same simulated engine, update and payload: at step s the trainer collects batch s from the pool
(`wait`: the trainer idles), submits the next batches (min(--max-inflight, --max-staleness) ahead, each with
the oldest weights it may be made with, rollout/ahead.py LookAhead), runs the update, and sends the weights
(`sync`: the put, and the pool's delivery to idle actors; busy ones load before their next chunk). Each
size runs alone (a pool's generation keeps going between its steps, so interleaving sizes would hide other
sizes' steps inside its waits); the JSON says so. Trainer idle = wait / step time; the age of every
sample (trainer version − its version) is counted and must stay within --max-staleness.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import ray
import torch

from moon_ray.config import RayConfig
from moon_ray.infrastructure.runtime import init_ray
from moon_ray.rollout.ahead import LookAhead
from moon_ray.rollout.base import SamplingConfig
from moon_ray.rollout.pool import RolloutPool
from moon_ray.weight_sync.object_store import ObjectStoreTransport


def payload(mb: float) -> list[tuple[str, torch.Tensor]]:
    """`mb` megabytes of fp32 tensors of 1 MB, as a weight payload."""
    return [(f"layer.{i}.weight", torch.randn(512, 512)) for i in range(max(1, round(mb)))]


def step(pool, prompts, sampling, weights, transport, version: int, update_s: float) -> dict:
    """One synchronous step: gen -> update (simulated) -> sync; its phase seconds."""
    t0 = time.perf_counter()
    groups = ray.get(pool.generate.remote(prompts, sampling))
    t1 = time.perf_counter()
    time.sleep(update_s)  # the trainer's update, simulated
    t2 = time.perf_counter()
    transport.send(weights, [pool], version=version)
    t3 = time.perf_counter()
    assert len(groups) == len(prompts) and all(r.version == version - 1 for g in groups for r in g)
    return {"gen_s": t1 - t0, "update_s": t2 - t1, "sync_s": t3 - t2, "step_s": t3 - t0}


def busy(pool) -> list[float]:
    return [ray.get(h.info.remote())["busy_s"] for h in ray.get(pool.worker_handles.remote())]


def measure(args) -> list[dict]:
    """Every pool size at once, steps interleaved round by round (1, 2, 4, 1, 2, 4, ...), so that a change in
    the machine's load falls on every size alike; the medians and sums are over each size's own steps."""
    engine = {"token_s": args.token_s, "batch_size": args.batch}
    pools = {n: RolloutPool.remote("simulated", engine, n, 0.25) for n in args.actors}
    ray.get([p.status.remote() for p in pools.values()])
    transport, weights = ObjectStoreTransport(), payload(args.payload_mb)
    torch.manual_seed(0)
    prompts = [torch.randn(24, 576) for _ in range(args.products)]
    sampling = SamplingConfig(n=args.group, max_tokens=args.max_tokens, seed=0)
    rows: dict[int, list[dict]] = {n: [] for n in pools}
    try:
        for r in range(args.warmup + args.steps):
            if r == args.warmup:
                busy0 = {n: busy(p) for n, p in pools.items()}
            for n, pool in pools.items():
                rows[n].append(step(pool, prompts, sampling, weights, transport, r + 1, args.update_s))
        busy1 = {n: busy(p) for n, p in pools.items()}
    finally:
        for pool in pools.values():
            ray.get(pool.shutdown.remote())
            ray.kill(pool)
    out = []
    for n in pools:
        steady = rows[n][args.warmup:]
        total = sum(x["step_s"] for x in steady)
        actor_busy = statistics.mean(b - a for a, b in zip(busy0[n], busy1[n], strict=True))
        out.append({"actors": n, "samples_per_s": round(args.products * args.group * len(steady) / total, 2),
                    **{k: round(statistics.median(x[k] for x in steady), 4) for k in steady[0]},
                    "trainer_idle": round(sum(x["gen_s"] + x["sync_s"] for x in steady) / total, 3),
                    "rollout_idle": round(1 - actor_busy / total, 3)})
        print(out[-1], flush=True)
    return out


def measure_async(args) -> list[dict]:
    """Each pool size alone: the asynchronous loop for warmup + steps steps."""
    transport, weights = ObjectStoreTransport(), payload(args.payload_mb)
    torch.manual_seed(0)
    prompts = [torch.randn(24, 576) for _ in range(args.products)]
    total_steps = args.warmup + args.steps
    out = []
    for n in args.actors:
        pool = RolloutPool.remote("simulated", {"token_s": args.token_s, "batch_size": args.batch}, n, 0.25)
        ray.get(pool.status.remote())
        plan = LookAhead(args.max_inflight, args.max_staleness, 1, 0, 0, total_steps)
        tickets: dict[int, int] = {}
        rows, ages = [], {}
        try:
            for s in range(total_steps):
                if s == args.warmup:
                    busy0 = busy(pool)
                t0 = time.perf_counter()
                ticket = tickets.pop(s, None)
                if ticket is None:
                    ticket = ray.get(pool.submit.remote(prompts, SamplingConfig(n=args.group, max_tokens=args.max_tokens,
                                                                              seed=s), plan.min_version(s)))
                groups = ray.get(pool.collect.remote(ticket))
                t1 = time.perf_counter()
                for j in plan.wanted(s, set(tickets)):
                    sampling = SamplingConfig(n=args.group, max_tokens=args.max_tokens, seed=j)
                    tickets[j] = ray.get(pool.submit.remote(prompts, sampling, plan.min_version(j)))
                t2 = time.perf_counter()
                time.sleep(args.update_s)  # the trainer's update, simulated
                t3 = time.perf_counter()
                transport.send(weights, [pool], version=s + 1)
                t4 = time.perf_counter()
                assert len(groups) == len(prompts)
                if s >= args.warmup:
                    for g in groups:
                        for r in g:
                            ages[s - r.version] = ages.get(s - r.version, 0) + 1
                    rows.append({"wait_s": t1 - t0, "submit_s": t2 - t1, "update_s": t3 - t2, "sync_s": t4 - t3,
                                 "step_s": t4 - t0})
            busy1 = busy(pool)
        finally:
            ray.get(pool.shutdown.remote())
            ray.kill(pool)
        total = sum(x["step_s"] for x in rows)
        actor_busy = statistics.mean(b - a for a, b in zip(busy0, busy1, strict=True))
        out.append({"actors": n, "samples_per_s": round(args.products * args.group * len(rows) / total, 2),
                    **{k: round(statistics.median(x[k] for x in rows), 4) for k in rows[0]},
                    "trainer_idle": round(sum(x["wait_s"] for x in rows) / total, 3),
                    "rollout_idle": round(1 - actor_busy / total, 3),
                    "sample_age_counts": {str(a): ages[a] for a in sorted(ages)},
                    "max_age": max(ages), "within_staleness": max(ages) <= args.max_staleness})
        print("async", out[-1], flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--products", type=int, default=32, help="B: prompts per step (all trainer ranks)")
    p.add_argument("--group", type=int, default=4, help="G: traces per prompt")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--token-s", type=float, default=0.004, help="simulated seconds per decoding step")
    p.add_argument("--batch", type=int, default=16, help="sequences per simulated decoding step")
    p.add_argument("--update-s", type=float, default=0.25, help="simulated trainer update per step")
    p.add_argument("--payload-mb", type=float, default=32.0, help="weight payload synced per step")
    p.add_argument("--max-inflight", type=int, default=2, help="asynchronous loop: rollout.max_inflight")
    p.add_argument("--max-staleness", type=int, default=2, help="asynchronous loop: rollout.max_staleness")
    p.add_argument("--out", default="bench/results/rollout_scaling.json")
    args = p.parse_args()
    for attempt in range(3):  # Ray gives its raylet 30 s to register: a loaded machine can miss that
        try:
            init_ray(RayConfig(num_cpus=2, progress=False))
            break
        except Exception as e:
            if "timed out during startup" not in str(e) or attempt == 2:
                raise
            print(f"ray did not start ({e}); retrying", flush=True)
            ray.shutdown()
    rows = measure(args)
    async_rows = measure_async(args)
    base = rows[0]["samples_per_s"]
    for r in rows + async_rows:
        r["speedup_vs_sync_first"] = round(r["samples_per_s"] / base, 2)
    best = max(async_rows, key=lambda r: r["actors"])
    result = {
        "bench": "rollout_scaling",
        "loop": "synchronous rows: gen -> update -> sync each step; asynchronous rows: collect -> submit ahead -> "
                "update -> sync, generation of the next batches overlapping the update (rollout.asynchronous=true)",
        "engine": f"simulated: sleep {args.token_s} s per decoding step of up to {args.batch} sequences "
                  "(moon_ray/rollout/simulated.py), not a language model",
        "update": f"simulated: sleep {args.update_s} s (no trainer)",
        "sync": f"real: object-store payload of {args.payload_mb:g} MB, put once, every actor pulls it",
        "settings": vars(args), "rows": rows, "async_rows": async_rows,
        "target": {"want": f"async with {best['actors']} actors >= 2.5x sync with {rows[0]['actors']}, trainer idle < 0.2",
                   "speedup": best["speedup_vs_sync_first"], "trainer_idle": best["trainer_idle"],
                   "met": best["speedup_vs_sync_first"] >= 2.5 and best["trainer_idle"] < 0.2},
        "note": "synchronous sizes measured together, steps interleaved round by round; asynchronous sizes one after "
                "another, each alone, after the synchronous ones; phase seconds are medians; idle fractions over each "
                "size's own steps: trainer = (gen + sync) / step time (synchronous), wait / step time (asynchronous); "
                "rollout = 1 - actor busy (generate + load) / step time, mean over actors",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
