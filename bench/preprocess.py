"""Benchmark: catalog preprocessing with Ray Data vs a single-process loop doing the same work.

    .venv/bin/python bench/preprocess.py [--repeats 2] [--out bench/results/preprocess.json] [overrides…]

Both paths read the same table, learn the gazetteer, run `process_batch` (decode/validate/clean/
resize/entities) on every row and write products + rejects Parquet. Ray starts once before timing
(a cluster is long-lived); a 300-row warm-up runs on both paths first, and image files are read once
so that both see a warm page cache. Prints and writes JSON with the times and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from moon_ray.catalog.ingest import learn_gazetteer, run_preprocess
from moon_ray.catalog.process import process_batch
from moon_ray.catalog.read import read_table
from moon_ray.catalog.schema import PRODUCT_SCHEMA, REJECT_SCHEMA
from moon_ray.config import load_config
from moon_ray.infrastructure.runtime import init_ray


def single_process(cfg) -> int:
    """The same work in one Python process, no Ray."""
    raw = read_table(cfg.data)
    gaz = learn_gazetteer(raw, cfg)
    parts = [process_batch(pa.Table.from_batches([b]), cfg, gaz) for b in raw.table.to_batches(cfg.preprocess.rows_per_shard)]
    table = pa.concat_tables(parts)
    out = Path(cfg.data.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ok = table.filter(pc.is_null(table["reason_code"])).select(PRODUCT_SCHEMA.names)
    pq.write_table(ok, out / "products.parquet")
    pq.write_table(table.filter(pc.is_valid(table["reason_code"])).select(REJECT_SCHEMA.names), out / "rejects.parquet")
    return ok.num_rows


def warm_page_cache(image_dir: str) -> None:
    for entry in os.scandir(image_dir):
        with open(entry.path, "rb") as fh:
            fh.read()


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="bench/results/preprocess.json")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="moon-bench-"))
    base = ["ray.progress=false", *args.overrides]
    cfg = load_config(None, [*base, f"data.output_dir={tmp / 'ray'}"])
    single_cfg = load_config(None, [*base, f"data.output_dir={tmp / 'single'}"])
    t = time.perf_counter()
    init_ray(cfg.ray)
    ray_init_s = time.perf_counter() - t
    warm_page_cache(cfg.data.image_dir)
    warm = ["data.limit=300", f"data.output_dir={tmp / 'warm'}"]
    run_preprocess(load_config(None, [*base, *warm]))
    single_process(load_config(None, [*base, *warm]))

    stats = {}
    ray_times = timed(lambda: stats.update(run_preprocess(cfg)), args.repeats)
    single_times = timed(lambda: single_process(single_cfg), args.repeats)
    import ray

    result = {
        "benchmark": "preprocess",
        "products": stats["input"],
        "ok": stats["ok"],
        "rejected": stats["rejected"],
        "cpus": ray.cluster_resources().get("CPU"),
        "machine": platform.processor() or platform.machine(),
        "ray_init_s": round(ray_init_s, 2),
        "ray_data_s": [round(x, 2) for x in ray_times],
        "single_process_s": [round(x, 2) for x in single_times],
        "ray_data_best_s": round(min(ray_times), 2),
        "single_process_best_s": round(min(single_times), 2),
        "speedup": round(min(single_times) / min(ray_times), 2),
        "speedup_including_ray_init": round(min(single_times) / (min(ray_times) + ray_init_s), 2),
        "target_speedup": 1.7,
    }
    shutil.rmtree(tmp, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
