"""Benchmark: rollout tokens/s of a vLLM actor vs the torch (transformers) engine.

    .venv/bin/python bench/rollout.py [--prompts 32] [--n 4] [--max-tokens 32] [--cpus 2] [--dtypes float32 bfloat16]

Same model (SmolLM2-135M-Instruct, the packaged weights), the same prompts (chat prompts of real
catalog titles, as prompt embeddings), the same sampling (`--n` traces per prompt as GRPO asks for,
temperature 1, fixed seed) and the same CPU cores given to both: each engine runs alone in a Ray
actor with `--cpus` CPUs and as many threads (vLLM's OpenMP team bound to those cores). The torch
engine runs in float32 (the trainer's dtype); vLLM runs once per `--dtypes` entry. The first generate call is a warm-up; the best of `--repeats` timed
calls counts. The speedup is the best vLLM variant over the torch engine; every variant is listed.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import pyarrow.parquet as pq
import ray
import torch

from moon_ray.config import LMConfig
from moon_ray.models.language import load_tokenizer
from moon_ray.models.reasoning import prompt_text
from moon_ray.models.weights import smollm2_dir
from moon_ray.rollout.base import SamplingConfig
from moon_ray.rollout.pool import RolloutWorker


def make_prompts(n: int, catalog: str) -> list[torch.Tensor]:
    from safetensors import safe_open

    tok = load_tokenizer(LMConfig())
    titles = pq.read_table(Path(catalog) / "products", columns=["title"]).column("title").to_pylist()[:n]
    with safe_open(str(smollm2_dir() / "model.safetensors"), framework="pt") as f:
        table = f.get_tensor("model.embed_tokens.weight")
    return [table[torch.tensor(tok(prompt_text(tok, t, False), add_special_tokens=False)["input_ids"])] for t in titles]


def run_engine(name: str, kwargs: dict, cpus: float, prompts, sampling, repeats: int) -> dict:
    actor = ray.remote(RolloutWorker).options(num_cpus=cpus).remote(name, kwargs)
    t = time.perf_counter()
    ray.get(actor.info.remote())
    startup = time.perf_counter() - t
    ray.get(actor.generate.remote(prompts[:4], sampling))  # warm-up
    best, tokens = float("inf"), 0
    for _ in range(repeats):
        t = time.perf_counter()
        groups = ray.get(actor.generate.remote(prompts, sampling))
        dt = time.perf_counter() - t
        if dt < best:
            best, tokens = dt, sum(len(r.token_ids) for g in groups for r in g)
    ray.kill(actor)
    return {"startup_s": round(startup, 1), "seconds": round(best, 2), "tokens": tokens, "tokens_per_s": round(tokens / best, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=4, help="traces per prompt (rollout.group_size)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], help="vLLM dtypes to run")
    ap.add_argument("--catalog", default="outputs/catalog")
    ap.add_argument("--out", default="bench/results/rollout.json")
    args = ap.parse_args()
    ray.init(num_cpus=args.cpus, include_dashboard=False)
    prompts = make_prompts(args.prompts, args.catalog)
    sampling = SamplingConfig(n=args.n, max_tokens=args.max_tokens, temperature=1.0, top_p=1.0, seed=0)
    model_dir = str(smollm2_dir())
    torch_res = run_engine("torch", {"model_dir": model_dir, "threads": args.cpus, "batch_size": args.prompts * args.n},
                           args.cpus, prompts, sampling, args.repeats)
    print("torch", torch_res, flush=True)
    variants = {}
    for dtype in args.dtypes:
        variants[dtype] = run_engine("vllm", {"model_dir": model_dir, "threads": args.cpus, "dtype": dtype,
                                              "max_model_len": 512}, args.cpus, prompts, sampling, args.repeats)
        print("vllm", dtype, variants[dtype], flush=True)
    best = max(variants, key=lambda d: variants[d]["tokens_per_s"])
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    result = {
        "benchmark": "rollout", "model": "SmolLM2-135M-Instruct", "prompts": args.prompts, "n": args.n,
        "max_tokens": args.max_tokens, "cpus": args.cpus, "device": gpu or platform.processor() or platform.machine(),
        "torch_engine": torch_res, "vllm_engine": variants[best], "vllm_dtype": best, "vllm_variants": variants,
        "speedup_vllm_over_torch": round(variants[best]["tokens_per_s"] / torch_res["tokens_per_s"], 2),
        "speedup_by_dtype": {d: round(v["tokens_per_s"] / torch_res["tokens_per_s"], 2) for d, v in variants.items()},
        "target_speedup": 10.0 if gpu else 2.0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
