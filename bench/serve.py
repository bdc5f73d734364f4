"""Benchmark: the Serve deployment over HTTP vs a direct batched forward of the same model, in one run;
and the production scenarios (`--scenario`, bench/serve_scenarios.py).

    .venv/bin/python bench/serve.py [--model frozen] [--threads 1] [--rounds 3] [--soak 2000] [--out bench/results/serve.json] [overrides…]
    .venv/bin/python bench/serve.py --scenario startup --models frozen outputs/train/export
    .venv/bin/python bench/serve.py --scenario isolation --model outputs/train/export
    .venv/bin/python bench/serve.py --scenario replicas --model frozen
    .venv/bin/python bench/serve.py --scenario soak --soak-seconds 600

Inputs are product titles from the preprocessed catalog (`data.output_dir`; run `moon-ray preprocess`
first), one text per request, sent as the `openai` client sends them (encoding_format=base64).

Scenario `throughput` (the default):
- direct: the encoder the replica loads (moon_ray.serve.app.load_encoder), in one process with
  `--threads` torch threads, `serve.max_batch_size` titles per call (and, for reference, one per call).
  That process is a Ray actor asking for the replica's CPUs: Ray runs its workers at niceness 15, so a
  forward in this (niceness 0) script would win the shared cores from the replica and proxy and compare
  schedulers, not serving.
- http: one replica with `--threads` CPUs (torch uses as many threads) and the deployment's dynamic
  batching behind Serve's proxy on 127.0.0.1, driven at concurrency 1, 8 and 32 by a minimal asyncio
  HTTP/1.1 keep-alive client (the client shares the cores with the server, so it must cost little);
  throughput (requests = titles per second) and p50/p99 latency of each request.
- The machine is shared (training runs beside it), so the baseline is measured in `--rounds` back-to-back
  pairs (direct batched, then HTTP at concurrency 32), pooled; each round's ratio is reported too.
- also at concurrency 32: 8 titles per request (Serve's per-request cost shared by 8 inputs), and the
  same deployment over the `random` encoder (no model cost): the ceiling of Serve's request path here.
- soak: --soak requests at concurrency 32; every response is checked (status 200, one embedding of the
  model's dimension per input, base64 of that many float32); errors are counted and must be 0.
Target: HTTP throughput at concurrency 32 >= 0.8x the direct batched throughput. The search index is
off (serve.index_limit=0). Loopback only. Prints and writes JSON.

Production scenarios (each writes bench/results/serve_<scenario>.json unless --out is given):
- startup: for each of --models, a replica started with its prebuilt index (serve.index_dir, built
  before by `moon-ray index`): seconds from deploying to the first 200 answer of /v1/search, and the
  replica's own split (model load, index load). Target: within 30 s.
- isolation: an exported model (ingress + MoonReasoner): p99 latency of plain embedding requests at
  concurrency 16, alone and with 2 clients sending reasoning=true requests back to back, alternating
  over --rounds. Target: with / alone <= 1.5.
- replicas: throughput at concurrency 32 with 1 and with 2 replicas (serve.cpus_per_replica each),
  alternating over --rounds: the scaling factor.
- soak: --soak-seconds at concurrency 32, every response checked; the replica's and its model
  process's RSS (from /metrics) sampled every 30 s, at start and end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import socket
import time
from pathlib import Path

import numpy as np

from moon_ray.config import load_config

TARGET = 0.8
CONCURRENCY = (1, 8, 32)


def titles(cfg, n: int) -> list[str]:
    import pyarrow.dataset as ds

    products = Path(cfg.data.output_dir) / "products"
    if not products.is_dir():
        raise SystemExit(f"no preprocessed catalog at {products}: run `moon-ray preprocess` first")
    return ds.dataset(products, format="parquet").to_table(columns=["title"]).column("title").to_pylist()[:n]


def stats(latencies: list[float], items: int, seconds: float) -> dict:
    ms = np.asarray(latencies) * 1000
    return {"items": items, "seconds": round(seconds, 3), "throughput": round(items / seconds, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def direct(encoder, texts: list[str], batch: int) -> dict:
    """Encode `texts` in chunks of `batch` in this process; latency per call."""
    encoder.encode([None] * batch, texts[:batch])  # warm-up
    latencies, start = [], time.perf_counter()
    for s in range(0, len(texts), batch):
        chunk = texts[s : s + batch]
        t = time.perf_counter()
        encoder.encode([None] * len(chunk), chunk)
        latencies.append(time.perf_counter() - t)
    return dict(stats(latencies, len(texts), time.perf_counter() - start), batch=batch, _latencies=latencies)


class Connection:
    """A minimal HTTP/1.1 keep-alive client: the load generator shares the 2 cores with the server, so it
    must cost little (httpx spends about 1 ms of CPU per request, this about 0.1 ms)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
        if headers.get("transfer-encoding") == "chunked":
            data = b""
            while size := int((await self.reader.readuntil(b"\r\n")).strip(), 16):
                data += (await self.reader.readexactly(size + 2))[:-2]
            await self.reader.readuntil(b"\r\n")
        else:
            data = await self.reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection") == "close":
            self.writer.close()
            self.writer = None
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def load(port: int, model: str, texts: list[str], concurrency: int, dim: int, per_request: int = 1,
               prefix: str = "") -> dict:
    """POST the texts, `per_request` per request, `concurrency` requests at a time; stats (items = texts)
    with the error count; a response is correct when it holds one base64 vector of `dim` floats per text."""
    latencies: list[float] = []
    errors = 0
    chunks = [texts[s : s + per_request] for s in range(0, len(texts), per_request)]
    bodies = [json.dumps({"model": model, "input": c if per_request > 1 else c[0], "encoding_format": "base64"})
              .encode() for c in chunks]

    async def worker(conn: Connection, queue):
        nonlocal errors
        for i in queue:
            t = time.perf_counter()
            try:
                status, data = await conn.post(f"{prefix}/v1/embeddings", bodies[i])
                rows = json.loads(data)["data"] if status == 200 else []
                ok = len(rows) == len(chunks[i]) and all(len(base64.b64decode(r["embedding"])) == 4 * dim
                                                         for r in rows)
            except (OSError, asyncio.IncompleteReadError, ValueError, KeyError, IndexError):
                ok = False
                conn.close()
                conn.writer = None
            latencies.append(time.perf_counter() - t)
            errors += not ok

    conns = [Connection("127.0.0.1", port) for _ in range(concurrency)]
    warm = iter(range(min(len(chunks), 2 * concurrency)))  # warm-up: every connection opened and used
    await asyncio.gather(*(worker(c, warm) for c in conns))
    latencies.clear()
    queue, errors = iter(range(len(chunks))), 0
    start = time.perf_counter()
    await asyncio.gather(*(worker(c, queue) for c in conns))
    seconds = time.perf_counter() - start
    for c in conns:
        c.close()
    return dict(stats(latencies, len(texts), seconds), concurrency=concurrency, inputs_per_request=per_request,
                errors=errors, _latencies=latencies)


def batching(url: str) -> dict:
    """The replica's dynamic-batching counters (GET /healthz)."""
    import httpx

    return httpx.get(f"{url}/healthz", timeout=60).json()["batching"]


def mean_batch(before: dict, after: dict) -> float:
    """Items per encode call between two /healthz readings (warm-up requests included)."""
    batches = after["batches"] - before["batches"]
    return round((after["items"] - before["items"]) / batches, 2) if batches else 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pooled(runs: list[dict]) -> dict:
    """Several runs as one: items and seconds summed, percentiles over every latency."""
    latencies = [x for r in runs for x in r["_latencies"]]
    out = stats(latencies, sum(r["items"] for r in runs), sum(r["seconds"] for r in runs))
    extra = {k: runs[0][k] for k in ("batch", "concurrency", "inputs_per_request") if k in runs[0]}
    if "errors" in runs[0]:
        extra["errors"] = sum(r["errors"] for r in runs)
    if "mean_batch_size" in runs[0]:
        extra["mean_batch_size"] = round(sum(r["mean_batch_size"] for r in runs) / len(runs), 2)
    return dict(out, runs=len(runs), **extra)


class Direct:
    """The direct baseline, in a Ray actor: a Ray worker process like the replica (same niceness, same
    CPU request, same torch threads), so neither side is favoured by the scheduler of a shared machine."""

    def __init__(self, config: dict, threads: int):
        import torch

        from moon_ray.config import Config, build
        from moon_ray.serve.app import load_encoder

        torch.set_num_threads(threads)
        self.encoder = load_encoder(build(Config, config))

    def run(self, texts: list[str], batch: int) -> dict:
        return direct(self.encoder, texts, batch)

    def niceness(self) -> int:
        return os.nice(0)


def measure(cfg, texts: list[str], counts: dict[int, int], rounds: int, soak: int) -> dict:
    """Against one running deployment: HTTP at c=1 and c=8, then `rounds` back-to-back pairs of (direct
    batched, HTTP at c=32), so that both sides see the same machine load, then 8 texts per request, then
    the soak; last, Serve's own ceiling (the same deployment over the near-free `random` encoder)."""
    import httpx
    import ray
    from ray import serve

    from moon_ray.config import to_dict
    from moon_ray.infrastructure.runtime import init_ray
    from moon_ray.serve.app import application, start

    init_ray(cfg.ray)
    url = start(cfg, application(cfg), name="bench")
    threads = max(1, int(cfg.serve.cpus_per_replica))
    actor = ray.remote(Direct).options(num_cpus=cfg.serve.cpus_per_replica).remote(to_dict(cfg), threads)
    try:
        card = httpx.get(f"{url}/v1/models", timeout=60).json()["data"][0]
        port, batch, top = cfg.serve.port, cfg.serve.max_batch_size, CONCURRENCY[-1]

        def http(items, c, per_request=1):
            before = batching(url)
            run = asyncio.run(load(port, card["id"], items, c, card["dim"], per_request))
            run["mean_batch_size"] = mean_batch(before, batching(url))
            print(f"http  c={c:<3} x{per_request} {public(run)}", flush=True)
            return run

        out = {"direct_unbatched": ray.get(actor.run.remote(texts[: counts[1]], 1)), "http": {}, "pairs": [],
               "direct_niceness": ray.get(actor.niceness.remote())}
        print(f"direct batch=1   {public(out['direct_unbatched'])}", flush=True)
        for c in CONCURRENCY[:-1]:
            out["http"][str(c)] = http(texts[: counts[c]], c)
        for _ in range(rounds):
            d = ray.get(actor.run.remote(texts, batch))
            print(f"direct batch={batch}  {public(d)}", flush=True)
            h = http(texts, top)
            out["pairs"].append({"direct": d, "http": h, "ratio": round(h["throughput"] / d["throughput"], 3)})
        out["direct_batched"] = pooled([p["direct"] for p in out["pairs"]])
        out["http"][str(top)] = pooled([p["http"] for p in out["pairs"]])
        out["http_8_inputs_per_request"] = http(texts, top, per_request=8)
        out["soak"] = http((texts * (soak // len(texts) + 1))[:soak], top)
    finally:
        ray.kill(actor)
        serve.delete("bench")
    try:
        out["serve_ceiling_random_model"] = ceiling(cfg, texts)
        return public(out) | {"dim": card["dim"]}
    finally:
        serve.shutdown()


def ceiling(cfg, texts: list[str]) -> dict:
    """HTTP at c=32 over the `random` encoder (no model cost): what Serve's request path alone sustains here."""
    import dataclasses

    from ray import serve

    from moon_ray.serve.app import application

    free = dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, model="random"))
    serve.run(application(free), name="bench-ceiling", route_prefix=cfg.serve.route_prefix)
    run = asyncio.run(load(cfg.serve.port, "random", texts, CONCURRENCY[-1], 256))
    print(f"ceiling (random encoder) c=32 {public(run)}", flush=True)
    return run


def public(x):
    """Without the raw latencies."""
    if isinstance(x, dict):
        return {k: public(v) for k, v in x.items() if k != "_latencies"}
    return [public(v) for v in x] if isinstance(x, list) else x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="frozen", help="a baseline name or an exported model directory")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the replica and of the direct run")
    ap.add_argument("--texts", type=int, default=1024, help="titles per direct run and per HTTP run at c=32")
    ap.add_argument("--rounds", type=int, default=3, help="back-to-back (direct, HTTP c=32) pairs")
    ap.add_argument("--soak", type=int, default=2000, help="requests of the error-counting run")
    ap.add_argument("--out", default=None, help="default: bench/results/serve.json, serve_<scenario>.json")
    ap.add_argument("--scenario", default="throughput", choices=SCENARIOS)
    ap.add_argument("--models", nargs="+", default=["frozen"], help="startup: the models to start (prebuilt indexes)")
    ap.add_argument("--soak-seconds", type=float, default=600.0, help="soak scenario: how long")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.scenario != "throughput":
        return scenario(args)
    args.out = args.out or "bench/results/serve.json"
    import torch

    from moon_ray.serve.app import absolute_paths

    cfg = absolute_paths(load_config(None, [f"serve.model={args.model}", "serve.index_limit=0", "ray.progress=false",
                                            "serve.reasoning=false",  # no MoonReasoner: its CPU is the direct actor's
                                            f"serve.cpus_per_replica={args.threads}", f"serve.port={free_port()}",
                                            *args.overrides]))
    texts = titles(cfg, args.texts)
    counts = {1: max(64, len(texts) // 8), 8: max(256, len(texts) // 2)}
    load_start = os.getloadavg()[0]
    runs = measure(cfg, texts, counts, args.rounds, args.soak)
    ratio = runs["http"]["32"]["throughput"] / runs["direct_batched"]["throughput"]
    result = {
        "model": args.model, "threads": args.threads,
        "max_batch_size": cfg.serve.max_batch_size, "batch_wait_timeout_s": cfg.serve.batch_wait_timeout_s,
        "access_log": cfg.serve.access_log, "input": "one catalog title per request (encoding_format=base64)",
        **runs,
        "ratio_http_c32_vs_direct": round(ratio, 3), "round_ratios": [p["ratio"] for p in runs["pairs"]],
        "ratio_http_c32_8_inputs_vs_direct": round(
            runs["http_8_inputs_per_request"]["throughput"] / runs["direct_batched"]["throughput"], 3),
        "target": TARGET, "target_met": bool(ratio >= TARGET), "soak_zero_errors": runs["soak"]["errors"] == 0,
        "machine": {"cpus": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__,
                    "load_avg_start": round(load_start, 2), "load_avg_end": round(os.getloadavg()[0], 2)},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"http c=32 / direct batched = {ratio:.2f} (rounds {result['round_ratios']}, target >= {TARGET}); "
          f"soak {args.soak} requests, {runs['soak']['errors']} errors -> {out}")


SCENARIOS = ("throughput", "startup", "isolation", "replicas", "soak")


def scenario(args) -> None:
    """Run one production scenario (bench/serve_scenarios.py) and write its JSON."""
    import serve_scenarios as sc
    import torch

    from moon_ray.serve.app import absolute_paths

    base = [f"serve.model={args.model}", "ray.progress=false", f"serve.cpus_per_replica={args.threads}",
            f"serve.port={free_port()}", "serve.access_log=false"]
    search_off = [] if args.scenario == "startup" else ["serve.index_limit=0"]
    # replicas and soak measure the embedding path: no MoonReasoner taking a CPU of the 2 (isolation and
    # startup keep it, as `moon-ray serve --model <export>` deploys it)
    no_reasoner = ["serve.reasoning=false"] if args.scenario in ("replicas", "soak") else []
    cfg = absolute_paths(load_config(None, [*base, *search_off, *no_reasoner, *args.overrides]))
    texts = titles(cfg, args.texts)
    load_start = os.getloadavg()[0]
    if args.scenario == "startup":
        result = sc.startup(cfg, args.models)
    elif args.scenario == "isolation":
        result = sc.isolation(cfg, texts, args.rounds)
    elif args.scenario == "replicas":
        result = sc.replicas(cfg, texts, args.rounds)
    else:
        result = sc.soak(cfg, texts, args.soak_seconds)
    result = {"scenario": args.scenario, "model": args.model, "threads": args.threads, "overrides": args.overrides,
              **result, "machine": {"cpus": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__,
                                    "load_avg_start": round(load_start, 2), "load_avg_end": round(os.getloadavg()[0], 2)}}
    out = Path(args.out or f"bench/results/serve_{args.scenario}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
