"""The production scenarios of bench/serve.py (`--scenario startup|isolation|replicas|soak`); see its docstring.

Each scenario starts its own Serve application on a free loopback port, drives it with the keep-alive
client of bench/serve.py, and returns a JSON-able dict. Timings use the wall clock of this process.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import threading
import time

import numpy as np
from serve import Connection, load, public, stats  # bench/serve.py (this directory)


def replace_serve(cfg, **changes):
    return dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, **changes))


def get_json(url: str) -> dict:
    import httpx

    return httpx.get(url, timeout=60).json()


def metric_values(url: str, names: tuple[str, ...]) -> dict[str, float]:
    """Unlabelled samples of these names from a replica's /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=60).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name in names and not s.labels}


# --------------------------------------------------------------------------------------------- startup
def startup(cfg, models: list[str], query: str = "navy blue shirt for men") -> dict:
    """Per model: deploy with its prebuilt index (serve.index_dir) and time deploy -> first 200 /v1/search;
    then the same from a fresh `moon-ray serve --model M` process (Ray and Serve started too)."""
    from ray import serve

    from moon_ray.eval.index_artifact import default_index_dir, read_manifest
    from moon_ray.infrastructure.runtime import init_ray
    from moon_ray.serve.app import absolute_paths, application

    init_ray(cfg.ray)
    serve.start(http_options={"host": "127.0.0.1", "port": cfg.serve.port}, logging_config={"enable_access_log": False})
    base = f"http://127.0.0.1:{cfg.serve.port}"
    out = {}
    try:
        for model in models:
            mcfg = absolute_paths(replace_serve(cfg, model=model, index_dir=None))
            index_dir = default_index_dir(mcfg)
            mcfg = replace_serve(mcfg, index_dir=str(index_dir), index_build_at_start=False)
            manifest = read_manifest(index_dir)
            app = application(mcfg)
            t0 = time.perf_counter()
            runner = threading.Thread(target=serve.run, args=(app,), kwargs={"name": "startup", "route_prefix": "/"})
            runner.start()
            first = first_search(base, t0, query)
            runner.join()
            running = time.perf_counter() - t0
            ready = get_json(f"{base}/readyz")
            out[model] = {"first_search_s": round(first, 2) if first else None, "serve_run_returned_s": round(running, 2),
                          "replica_startup_s": ready["startup_s"], "index": str(index_dir),
                          "index_products": manifest["count"], "index_job_s": manifest["seconds"],
                          "index_built_by": manifest["built_by"], "target_s": 30.0,
                          "target_met": bool(first is not None and first <= 30.0)}
            print(f"startup {model}: first search after {out[model]['first_search_s']} s {ready['startup_s']}",
                  flush=True)
            serve.delete("startup")
    finally:
        serve.shutdown()
    for model in models:  # then as a user starts it, each in a fresh `moon-ray serve` process
        out[model].update(cold_start(model, query))
        first = out[model]["cli_first_search_s"]
        out[model]["cli_target_met"] = bool(first is not None and first <= 30.0)
        print(f"moon-ray serve --model {model}: first search after {first} s", flush=True)
    return out


def first_search(url: str, t0: float, query: str, limit_s: float = 600.0, alive=lambda: True) -> float | None:
    """Seconds from t0 to the first 200 /v1/search with results (polled every 0.1 s), None if none came."""
    import httpx

    while time.perf_counter() - t0 < limit_s and alive():
        try:
            r = httpx.post(f"{url}/v1/search", json={"text": query, "k": 5}, timeout=60)
            if r.status_code == 200 and r.json()["data"]:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return None


def cold_start(model: str, query: str) -> dict:
    """`moon-ray serve --model M` as a user runs it (a new process: Ray, Serve, replicas): seconds from the
    command's start to its first search answer and to its "serving ..." line; then Ctrl-C (SIGINT), and
    the seconds it takes to shut down."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from serve import free_port

    port = free_port()
    exe = Path(sys.executable).with_name("moon-ray")
    said: dict[str, float] = {}
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(exe), "serve", "--model", model, "--port", str(port), "ray.progress=false",
                             "serve.access_log=false"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def read():
        for line in proc.stdout:
            if line.startswith("serving ") and "serving" not in said:
                said["serving"] = time.perf_counter() - t0

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    first = first_search(f"http://127.0.0.1:{port}", t0, query, alive=lambda: proc.poll() is None)
    while "serving" not in said and proc.poll() is None and time.perf_counter() - t0 < 600:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stop = time.perf_counter()
    code = proc.wait(timeout=120)
    return {"cli_first_search_s": round(first, 2) if first else None,
            "cli_says_serving_s": round(said["serving"], 2) if "serving" in said else None,
            "cli_exit_code": code, "cli_stop_s": round(time.perf_counter() - stop, 1)}


# ------------------------------------------------------------------------------------------- isolation
def catalog_documents(cfg, n: int = 16) -> list[dict]:
    """`n` test-split products as `/v1/embeddings` document inputs (image + title): what makes a reasoning
    model write a trace (queries are embedded without one, as training embeds them)."""
    from moon_ray.eval.data import read_products

    table = read_products(cfg.data.output_dir, ["title", "image"], "test", n, "data.output_dir",
                          "run `moon-ray preprocess` first")
    return [{"text": t, "image": base64.b64encode(b).decode()}
            for t, b in zip(table.column("title").to_pylist(), table.column("image").to_pylist(), strict=True)]


async def reasoning_clients(port: int, model: str, docs: list[dict], clients: int, stop: asyncio.Event) -> dict:
    """`clients` connections each sending one-product document requests (a trace each) back to back until
    `stop`."""
    latencies, codes = [], {}

    async def client(i: int):
        conn = Connection("127.0.0.1", port)
        n = i
        while not stop.is_set():
            body = json.dumps({"model": model, "input": [docs[n % len(docs)]], "input_type": "document"}).encode()
            t = time.perf_counter()
            try:
                status, _ = await conn.post("/v1/embeddings", body)
            except (OSError, asyncio.IncompleteReadError):
                status = -1
                conn.close()
                conn.writer = None
            codes[status] = codes.get(status, 0) + 1
            if status == 200:
                latencies.append(time.perf_counter() - t)
            n += clients
        conn.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    ms = np.asarray(latencies) * 1000
    return {"clients": clients, "answered": len(latencies), "status_codes": {str(k): v for k, v in codes.items()},
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None}


async def plain_with_reasoning(port, model, texts, concurrency, dim, docs, clients):
    stop = asyncio.Event()
    background = asyncio.create_task(reasoning_clients(port, model, docs, clients, stop))
    await asyncio.sleep(2.0)  # the reasoners are generating before the measurement starts
    try:
        plain = await load(port, model, texts, concurrency, dim)
    finally:
        stop.set()
    return plain, await background


def isolation(cfg, texts: list[str], rounds: int, concurrency: int = 16, clients: int = 2) -> dict:
    """p99 of plain embedding requests at `concurrency`, alone vs beside `clients` reasoning clients, in
    alternating rounds on one deployment (ingress + MoonReasoner)."""
    import httpx
    from ray import serve

    from moon_ray.infrastructure.runtime import init_ray
    from moon_ray.serve.app import application, start

    init_ray(cfg.ray)
    url = start(cfg, application(cfg), name="isolation")
    try:
        card = httpx.get(f"{url}/v1/models", timeout=60).json()["data"][0]
        assert card["reasoning"], "isolation needs a model that reasons: an exported MOON model"
        port, model, dim = cfg.serve.port, card["id"], card["dim"]
        docs = catalog_documents(cfg)
        warm = httpx.post(f"{url}/v1/embeddings", json={"model": model, "input": docs[:1], "input_type": "document"},
                          timeout=600)
        assert warm.status_code == 200, warm.text
        alone, beside, reasoners = [], [], []
        for r in range(rounds):
            a = asyncio.run(load(port, model, texts, concurrency, dim))
            b, bg = asyncio.run(plain_with_reasoning(port, model, texts, concurrency, dim, docs, clients))
            alone.append(a)
            beside.append(b)
            reasoners.append(bg)
            print(f"round {r}: alone p99 {a['p99_ms']} ms, with {clients} reasoning clients p99 {b['p99_ms']} ms "
                  f"(reasoning answered {bg['answered']}, codes {bg['status_codes']})", flush=True)
    finally:
        serve.delete("isolation")
        serve.shutdown()
    pa, pb = pooled(alone), pooled(beside)
    ratio = pb["p99_ms"] / pa["p99_ms"]
    return {"concurrency": concurrency, "reasoning_clients": clients, "rounds": rounds,
            "alone": public(pa), "with_reasoning": public(pb), "reasoning": reasoners,
            "round_ratios": [round(b["p99_ms"] / a["p99_ms"], 3) for a, b in zip(alone, beside, strict=True)],
            "p99_ratio": round(ratio, 3), "target": 1.5, "target_met": bool(ratio <= 1.5),
            "errors": sum(x["errors"] for x in alone + beside)}


def pooled(runs: list[dict]) -> dict:
    latencies = [x for r in runs for x in r["_latencies"]]
    out = stats(latencies, sum(r["items"] for r in runs), sum(r["seconds"] for r in runs))
    return dict(out, errors=sum(r["errors"] for r in runs), runs=len(runs))


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot (/proc/stat), for a busy fraction over a span."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def with_cpu(run_fn):
    """run_fn() with the machine's CPU busy fraction over the run, and this process's (the client's) share."""
    busy0, total0 = cpu_ticks()
    own0 = sum(os.times()[:2])
    run = run_fn()
    busy1, total1 = cpu_ticks()
    span = (total1 - total0) or 1
    cores = os.cpu_count() or 1
    run["machine_cpu_busy"] = round((busy1 - busy0) / span, 3)
    run["client_cpu_cores"] = round((sum(os.times()[:2]) - own0) / (run["seconds"] or 1), 3)
    run["cores"] = cores
    return run


# -------------------------------------------------------------------------------------------- replicas
def replicas(cfg, texts: list[str], rounds: int, concurrency: int = 32) -> dict:
    """Throughput at `concurrency` with 1 and with 2 replicas of the same deployment, alternating."""
    import httpx
    from ray import serve

    from moon_ray.infrastructure.runtime import init_ray
    from moon_ray.serve.app import application, start

    init_ray(cfg.ray)
    runs: dict[int, list[dict]] = {1: [], 2: []}
    url = None
    try:
        for r in range(rounds):
            for n in (1, 2):
                ncfg = replace_serve(cfg, num_replicas=n)
                if url is None:
                    url = start(ncfg, application(ncfg), name="replicas")
                else:
                    serve.run(application(ncfg), name="replicas", route_prefix=cfg.serve.route_prefix)
                model, dim = (lambda c: (c["id"], c["dim"]))(httpx.get(f"{url}/v1/models", timeout=60).json()["data"][0])
                run = with_cpu(lambda m=model, d=dim: asyncio.run(load(cfg.serve.port, m, texts, concurrency, d)))
                runs[n].append(run)
                print(f"round {r}: {n} replica(s) {public(run)}", flush=True)
    finally:
        serve.shutdown()
    one, two = pooled(runs[1]), pooled(runs[2])
    for pooled_run, n in ((one, 1), (two, 2)):
        pooled_run["machine_cpu_busy"] = [r["machine_cpu_busy"] for r in runs[n]]
        pooled_run["client_cpu_cores"] = [r["client_cpu_cores"] for r in runs[n]]
    return {"concurrency": concurrency, "cpus_per_replica": cfg.serve.cpus_per_replica, "one": public(one),
            "two": public(two), "scaling": round(two["throughput"] / one["throughput"], 3),
            "round_scaling": [round(b["throughput"] / a["throughput"], 3) for a, b in zip(runs[1], runs[2], strict=True)]}


# ------------------------------------------------------------------------------------------------ soak
async def load_for(port: int, model: str, texts: list[str], concurrency: int, dim: int, seconds: float,
                   sample, every_s: float = 30.0) -> dict:
    """`concurrency` clients posting titles back to back for `seconds`; `sample()` is called every `every_s`."""
    bodies = [json.dumps({"model": model, "input": t, "encoding_format": "base64"}).encode() for t in texts]
    latencies, errors, samples = [], 0, []
    deadline = time.perf_counter() + seconds

    async def client(i: int):
        nonlocal errors
        conn, n = Connection("127.0.0.1", port), i
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            try:
                status, data = await conn.post("/v1/embeddings", bodies[n % len(bodies)])
                rows = json.loads(data)["data"] if status == 200 else []
                ok = len(rows) == 1 and len(base64.b64decode(rows[0]["embedding"])) == 4 * dim
            except (OSError, asyncio.IncompleteReadError, ValueError, KeyError):
                ok = False
                conn.close()
                conn.writer = None
            latencies.append(time.perf_counter() - t)
            errors += not ok
            n += concurrency
        conn.close()

    async def sampler():
        start = time.perf_counter()
        while time.perf_counter() < deadline:
            samples.append({"t_s": round(time.perf_counter() - start, 1), **await asyncio.to_thread(sample)})
            await asyncio.sleep(min(every_s, max(0.0, deadline - time.perf_counter())))

    clock = time.perf_counter()
    await asyncio.gather(sampler(), *(client(i) for i in range(concurrency)))
    out = stats(latencies, len(latencies), time.perf_counter() - clock)
    return dict(out, errors=errors, requests=len(latencies), samples=samples)


def soak(cfg, texts: list[str], seconds: float, concurrency: int = 32) -> dict:
    """`seconds` of c=32 one-title requests; errors counted, replica and model-process RSS sampled."""
    import httpx
    from ray import serve

    from moon_ray.infrastructure.runtime import init_ray
    from moon_ray.serve.app import application, start

    names = ("moon_replica_process_resident_memory_bytes", "moon_model_process_resident_memory_bytes")
    init_ray(cfg.ray)
    url = start(cfg, application(cfg), name="soak")
    try:
        card = httpx.get(f"{url}/v1/models", timeout=60).json()["data"][0]
        asyncio.run(load(cfg.serve.port, card["id"], texts[:256], concurrency, card["dim"]))  # warm-up

        def sample():
            values = metric_values(url, names)
            return {"replica_rss_mb": round(values[names[0]] / 2**20, 1),
                    "model_rss_mb": round(values[names[1]] / 2**20, 1)}

        run = asyncio.run(load_for(cfg.serve.port, card["id"], texts, concurrency, card["dim"], seconds, sample))
        end = sample()
    finally:
        serve.delete("soak")
        serve.shutdown()
    first = run["samples"][0]
    print(f"soak {seconds:.0f} s: {run['requests']} requests, {run['errors']} errors, rss start {first} end {end}",
          flush=True)
    return {"seconds": seconds, "concurrency": concurrency, **{k: v for k, v in run.items() if k != "samples"},
            "rss_start": first, "rss_end": end, "rss_samples": run["samples"], "zero_errors": run["errors"] == 0}
