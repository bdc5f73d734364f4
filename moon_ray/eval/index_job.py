"""`moon-ray index`: embed the catalog once with a Ray Data actor pool and write the index artifact.

    moon-ray index --model outputs/train/export           # -> outputs/train/export-index
    moon-ray index                                         # the frozen baseline -> outputs/index-frozen
    moon-ray index --model outputs/train/export --out /mnt/shared/index serve.index_split=test
    moon-ray submit index --wait -- --model outputs/train-joint/export    # as a Ray job on a cluster

Serve replicas then load the directory in seconds (serve.index_dir, or the model's default place,
moon_ray/eval/index_artifact.py) instead of embedding the catalog at start-up: 9,583 products take
about 10 minutes of model time on 2 CPUs, which every replica, autoscaled ones included, used to spend.

The job: the products of data.output_dir (split serve.index_split, at most serve.index_limit, in
catalog order) go through `map_batches` over `serve.index_actors` actors of `serve.index_cpus_per_actor`
CPUs (and serve.index_gpus_per_actor GPUs), each holding one encoder and embedding
`serve.index_batch_size` products per call with `embed_products` (stored reasoning traces reused,
missing ones generated, for a model that reasons). The actors request the `moon_data` resource when
ray.use_custom_resources is on, so on a cluster they run on the data group. Vectors come back in any
order and are put back by position; the FAISS index (serve.index kind) is built on the driver.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa

from moon_ray.config import Config, absolute_path, load_config, with_absolute_paths
from moon_ray.eval.index_artifact import (
    TRACE_COLUMN,
    default_index_dir,
    embed_products,
    load_products,
    make_manifest,
    model_identity,
    product_encoder,
    product_meta,
    stored_traces,
    trace_summary,
    write_index_dir,
)
from moon_ray.infrastructure.timing import Stopwatch

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]


class IndexActor:
    """Ray Data actor: one encoder; a batch of products (position, image, title[, reasoning]) -> vectors."""

    def __init__(self, model: str, threads: int, device: str, batch_size: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.encoder = product_encoder(model, device, batch_size)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        traces = batch.column(TRACE_COLUMN).to_pylist() if TRACE_COLUMN in batch.column_names else None
        vecs, used = embed_products(self.encoder, batch.column("image").to_pylist(),
                                    batch.column("title").to_pylist(), traces)
        return {"position": batch.column("position").to_numpy(), "embedding": vecs,
                "trace": np.array(used if used is not None else [""] * len(vecs), dtype=object),
                "reasoned": np.full(len(vecs), used is not None)}


def embed_catalog(cfg: Config, table: pa.Table) -> tuple[np.ndarray, list[str] | None]:
    """(N, dim) vectors of `table`'s products in its order, and the traces used (None: no reasoning)."""
    import ray

    from moon_ray.infrastructure.resources import DATA, request

    s, n = cfg.serve, table.num_rows
    columns = ["image", "title", *([TRACE_COLUMN] if TRACE_COLUMN in table.column_names else [])]
    work = table.select(columns).append_column("position", pa.array(np.arange(n, dtype=np.int64)))
    # about 4 blocks per actor, whole batches each; from_blocks keeps them as they are (no read tasks)
    per_block = s.index_batch_size * max(1, -(-n // (4 * s.index_actors * s.index_batch_size)))
    blocks = [work.slice(i, per_block) for i in range(0, n, per_block)]
    extra = {"num_gpus": s.index_gpus_per_actor} if s.index_gpus_per_actor else {}
    device = "cuda" if s.index_gpus_per_actor else "cpu"
    ds = ray.data.from_blocks(blocks).map_batches(
        IndexActor,
        fn_constructor_kwargs={"model": s.model, "threads": int(s.index_cpus_per_actor), "device": device,
                               "batch_size": s.index_batch_size},
        batch_size=s.index_batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=s.index_actors),
        num_cpus=s.index_cpus_per_actor,
        resources=request(DATA, cfg.ray.use_custom_resources),
        **extra,
    )
    vectors: np.ndarray | None = None
    traces = [""] * n
    seen = np.zeros(n, dtype=bool)
    reasoned = False
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        rows = batch["position"]
        vecs = np.asarray(batch["embedding"], dtype=np.float32)
        if vectors is None:
            vectors = np.zeros((n, vecs.shape[1]), dtype=np.float32)
        vectors[rows] = vecs
        seen[rows] = True
        reasoned = reasoned or bool(np.any(batch["reasoned"]))
        for r, t in zip(rows, batch["trace"], strict=True):
            traces[int(r)] = str(t)
    if vectors is None or not seen.all():
        raise RuntimeError(f"the index job lost products: {int((~seen).sum())} of {n} came back empty")
    return vectors, traces if reasoned else None


def build_index_dir(cfg: Config, out: str | Path) -> dict:
    """Embed serve.model's catalog slice with the actor pool, write the artifact to `out`; its manifest."""
    from moon_ray.infrastructure.index import build_index
    from moon_ray.infrastructure.runtime import init_ray

    identity = model_identity(cfg.serve.model)  # an unusable model fails here, before any work
    table = load_products(cfg)
    init_ray(cfg.ray)
    clock = Stopwatch()
    vectors, used = embed_catalog(cfg, table)
    mask = stored_traces(table)[1] if used is not None else None  # a model that does not reason ignores them
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
