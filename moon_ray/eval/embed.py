"""Batch embedding on Ray Data: `map_batches` over an actor pool, each actor building the encoder once.

    vecs = embed_requests(requests, cfg)   # requests: pa.Table(row, image, text, degrade, product[, trace])
    vecs, traces = embed_requests_traced(products, cfg, ActorPool.for_index(cfg))    # `moon-ray index`

A request is one `Encoder.encode` input: image bytes and/or text; rows with `product` true are catalog
products (image + title) and go through `embed_products` instead (index_artifact.py), so a model that
reasons embeds each product with its trace exactly as the index does: the row's stored `trace` when
it has one, else the model's greedy trace. When `degrade` holds a key, the
actor first replaces the image by `degrade(image, cfg.eval.seed, key)` (moon_ray/eval/degrade.py),
so the query images are made in parallel next to the model, not on the driver. The actors ask for
`eval.cpus_per_actor` CPUs and `eval.gpus_per_actor` GPUs (fractions allowed; on a 2-core machine
give them fractions, or Ray Data has no CPU left), plus the `moon_data` resource when
`ray.use_custom_resources` is on. Rows come back in any order and are put back by `row`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from moon_ray.config import Config

REQUEST_SCHEMA = pa.schema(
    [("row", pa.int64()), ("image", pa.binary()), ("text", pa.string()), ("degrade", pa.string()),
     ("product", pa.bool_()), ("trace", pa.string())]
)


@dataclass(frozen=True)
class ActorPool:
    """The encoder actors of one job: the model, how many actors, their CPUs and GPUs, items per call."""

    model: str
    actors: int
    cpus: float
    gpus: float
    batch_size: int

    @classmethod
    def for_eval(cls, cfg: Config) -> ActorPool:
        ev = cfg.eval
        return cls(ev.model, ev.num_actors, ev.cpus_per_actor, ev.gpus_per_actor, ev.batch_size)

    @classmethod
    def for_index(cls, cfg: Config) -> ActorPool:
        s = cfg.serve
        return cls(s.model, s.index_actors, s.index_cpus_per_actor, s.index_gpus_per_actor, s.index_batch_size)


class EmbedActor:
    """Ray Data actor: holds one encoder; maps a batch of requests to (row, embedding, trace used)."""

    def __init__(self, model: str, seed: int, threads: int = 1, device: str = "cpu", batch_size: int = 32):
        from moon_ray.eval.index_artifact import product_encoder

        self.encoder = product_encoder(model, device, batch_size)
        self.seed = seed
        if "torch" in sys.modules:  # only models that use torch pay for importing it
            sys.modules["torch"].set_num_threads(max(1, threads))

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        vecs, traces = embed_batch_traced(self.encoder, batch, self.seed)
        return {"row": batch.column("row").to_numpy(), "embedding": vecs,
                "trace": np.array(traces if traces is not None else [None] * len(vecs), dtype=object)}


def embed_batch(encoder, batch: pa.Table, seed: int) -> np.ndarray:
    """(N, dim) float32 embeddings of a request table (see `embed_batch_traced`)."""
    return embed_batch_traced(encoder, batch, seed)[0]


def embed_batch_traced(encoder, batch: pa.Table, seed: int) -> tuple[np.ndarray, list[str | None] | None]:
    """(N, dim) float32 embeddings of a request table and the trace each product row was embedded with
    (None for the other rows; None in all when the model does not reason). Product rows go through
    `embed_products` (index_artifact.py: a stored `trace` used as given, else generated, as the index
    does), the rest through `encode`; images with a `degrade` key are degraded first (deterministically
    by seed + key)."""
    from moon_ray.eval.degrade import degrade
    from moon_ray.eval.index_artifact import embed_products

    images = batch.column("image").to_pylist()
    keys = batch.column("degrade").to_pylist()
    images = [degrade(im, seed, key) if key is not None and im is not None else im
              for im, key in zip(images, keys, strict=True)]
    texts = batch.column("text").to_pylist()
    stored = batch.column("trace").to_pylist() if "trace" in batch.column_names else [None] * len(texts)
    is_product = np.asarray(batch.column("product").to_pylist(), dtype=bool)
    products, queries = np.flatnonzero(is_product), np.flatnonzero(~is_product)
    parts, traces = [], None
    if products.size:
        vecs, used = embed_products(encoder, [images[i] for i in products], [texts[i] for i in products],
                                    [stored[i] for i in products])
        parts.append((products, vecs))
        if used is not None:
            traces = [None] * len(texts)
            for i, t in zip(products, used, strict=True):
                traces[i] = t
    if queries.size:
        parts.append((queries, np.asarray(encoder.encode([images[i] for i in queries], [texts[i] for i in queries]),
                                          np.float32)))
    vecs = np.zeros((len(texts), parts[0][1].shape[1]), dtype=np.float32)
    for rows, v in parts:
        vecs[rows] = v
    return vecs, traces


def embed_requests(requests: pa.Table, cfg: Config, pool: ActorPool | None = None) -> np.ndarray:
    """(N, dim) float32 embeddings of the N requests, in `row` order (rows must be 0..N-1), by the eval
    actor pool (eval.*) unless `pool` names another."""
    return embed_requests_traced(requests, cfg, pool)[0]


def embed_requests_traced(requests: pa.Table, cfg: Config,
                          pool: ActorPool | None = None) -> tuple[np.ndarray, list[str | None] | None]:
    """`embed_requests` and the trace each row was embedded with (None: no trace; None in all when the
    model does not reason)."""
    import ray

    from moon_ray.infrastructure.resources import DATA, request

    pool = pool or ActorPool.for_eval(cfg)
    n = requests.num_rows
    if n == 0:
        raise ValueError("nothing to embed: the request table is empty")
    if "trace" not in requests.column_names:
        requests = requests.append_column("trace", pa.nulls(n, pa.string()))
    requests = requests.select(REQUEST_SCHEMA.names).cast(REQUEST_SCHEMA)
    # about 4 blocks per actor (whole batches each). from_blocks keeps them as they are and reads
    # their metadata on the driver (from_arrow runs a Ray task per block for it).
    per_block = pool.batch_size * max(1, -(-n // (4 * pool.actors * pool.batch_size)))
    blocks = [requests.slice(i, per_block) for i in range(0, n, per_block)]
    extra = {"num_gpus": pool.gpus} if pool.gpus else {}
    ds = ray.data.from_blocks(blocks).map_batches(
        EmbedActor,
        fn_constructor_kwargs={"model": pool.model, "seed": cfg.eval.seed, "threads": int(pool.cpus),
                               "device": "cuda" if pool.gpus else "cpu", "batch_size": pool.batch_size},
        batch_size=pool.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=pool.actors),
        num_cpus=pool.cpus,
        resources=request(DATA, cfg.ray.use_custom_resources),
        **extra,
    )
    out: np.ndarray | None = None
    traces: list[str | None] = [None] * n
    seen = np.zeros(n, dtype=bool)
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        rows, vecs = batch["row"], np.asarray(batch["embedding"], dtype=np.float32)
        if out is None:
            out = np.zeros((n, vecs.shape[1]), dtype=np.float32)
        out[rows] = vecs
        seen[rows] = True
        for r, t in zip(rows, batch["trace"], strict=True):
            traces[int(r)] = t if isinstance(t, str) else None
    if out is None or not seen.all():
        raise RuntimeError(f"embedding lost rows: {int((~seen).sum())} of {n} came back empty")
    return out, traces if any(t is not None for t in traces) else None
