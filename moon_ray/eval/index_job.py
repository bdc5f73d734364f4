"""`moon-ray index`: embed the catalog once with a Ray Data actor pool and write the index artifact.

    moon-ray index --model outputs/train/export           # -> outputs/train/export-index
    moon-ray index                                         # the frozen baseline -> outputs/index-frozen
    moon-ray index --model outputs/train/export --out /mnt/shared/index serve.index_split=test
    moon-ray submit index --wait -- --model outputs/train-joint/export    # as a Ray job on a cluster

Serve replicas then load the directory in seconds (serve.index_dir, or the model's default place,
moon_ray/eval/index_artifact.py) instead of embedding the catalog at start-up: 9,583 products take
about 10 minutes of model time on 2 CPUs, which every replica, autoscaled ones included, used to spend.

The job: the products of data.output_dir (split serve.index_split, at most serve.index_limit, in
catalog order) go through evaluation's own Ray Data embedding (eval/embed.py `embed_requests_traced`)
over `serve.index_actors` actors of `serve.index_cpus_per_actor` CPUs (and serve.index_gpus_per_actor
GPUs), each holding one encoder and embedding `serve.index_batch_size` products per call with
`embed_products`: for a model that reasons, the stored traces of its own policy version are reused
(`moon-ray traces` writes them) and the missing ones generated; the job says which. The actors request
the `moon_data` resource when ray.use_custom_resources is on, so on a cluster they run on the data
group. The FAISS index (serve.index kind) is built on the driver.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa

from moon_ray.config import Config, absolute_path, load_config, with_absolute_paths
from moon_ray.eval.embed import ActorPool, embed_requests_traced
from moon_ray.eval.index_artifact import (
    default_index_dir,
    load_products,
    make_manifest,
    model_identity,
    product_meta,
    stored_traces,
    trace_summary,
    write_index_dir,
)
from moon_ray.infrastructure.timing import Stopwatch

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]


def product_requests(table: pa.Table, traces: list[str | None] | None) -> pa.Table:
    """The products of `table` as embed.py requests (image + title, the product side), with the stored
    traces that may be reused (None: none)."""
    n = table.num_rows
    return pa.table({"row": pa.array(np.arange(n, dtype=np.int64)), "image": table.column("image"),
                     "text": table.column("title"), "degrade": pa.nulls(n, pa.string()),
                     "product": pa.array(np.ones(n, dtype=bool)),
                     "trace": pa.array(traces if traces is not None else [None] * n, pa.string())})


def build_index_dir(cfg: Config, out: str | Path) -> dict:
    """Embed serve.model's catalog slice with the actor pool, write the artifact to `out`; its manifest."""
    from moon_ray.infrastructure.index import build_index
    from moon_ray.infrastructure.runtime import init_ray

    identity = model_identity(cfg.serve.model)  # an unusable model fails here, before any work
    table = load_products(cfg)
    stored, mask, told = stored_traces(table, identity)  # only the model's own policy version is reused
    if told:
        print(f"index: {told}", flush=True)
    init_ray(cfg.ray)
    clock = Stopwatch()
    vectors, traces = embed_requests_traced(product_requests(table, stored), cfg, ActorPool.for_index(cfg))
    used = [t or "" for t in traces] if traces is not None else None
    ix = cfg.index
    index = build_index(vectors, cfg.serve.index, ix.hnsw_m, ix.hnsw_ef_construction, ix.hnsw_ef_search,
                        use_gpu=False)
    manifest = make_manifest(cfg, table, identity, vectors.shape[1], trace_summary(table, used, identity, mask),
                             built_by=f"moon-ray index (Ray Data, {cfg.serve.index_actors} actors)",
                             seconds=clock.elapsed())
    write_index_dir(out, vectors, product_meta(table, used), manifest, index)
    return manifest


# ------------------------------------------------------------------------------------------------ CLI
def add_index_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="a baseline name (frozen, random) or an exported model directory (serve.model)")
    p.add_argument("--out", metavar="DIR", help="the index directory to write (default: the model's default place, "
                                                "<export>-index beside an export, index-<name> beside the catalog)")


def index_config(config: str | None, overrides: list[str], model: str | None) -> Config:
    cfg = load_config(config, [*overrides, *([f"serve.model={model}"] if model else [])])
    model_is_path = "/" in cfg.serve.model or Path(cfg.serve.model).is_dir()
    keys = ["data.output_dir", *(["serve.model"] if model_is_path else [])]
    return with_absolute_paths(cfg, keys, search=[ROOT])


def cli_index(args) -> int:
    """`moon-ray index [--model M] [--out DIR] [overrides]`: build the index artifact, print where it is."""
    cfg = index_config(args.config, list(args.overrides), args.model)
    out = Path(absolute_path(args.out, search=[ROOT])) if args.out else default_index_dir(cfg)
    cfg = dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, index_dir=str(out)))
    manifest = build_index_dir(cfg, out)
    traces = manifest["traces"]
    told = (f"; traces: {traces['stored']} stored, {traces['generated']} generated" if traces["embedded"] else "")
    print(f"indexed {manifest['count']} products with {manifest['identity']['name']} (dim {manifest['dim']}, "
          f"{manifest['faiss']['kind']}) in {manifest['seconds']:.0f} s{told}: {out}")
    default = default_index_dir(cfg)
    serve_cmd = f"moon-ray serve --model {cfg.serve.model}"
    print(f"serve it: {serve_cmd}" + ("" if out == default else f" serve.index_dir={out}"))
    return 0
