"""Batch embedding on Ray Data: `map_batches` over an actor pool, each actor building the encoder once.

    vecs = embed_requests(requests, cfg)   # requests: pa.Table(row, image, text, degrade, product)

A request is one `Encoder.encode` input: image bytes and/or text; rows with `product` true are catalog
products (image + title) and go through `Encoder.encode_products` instead, so a model that embeds
products differently (e.g. with generated reasoning) does so here too. When `degrade` holds a key, the
actor first replaces the image by `degrade(image, cfg.eval.seed, key)` (moon_ray/eval/degrade.py),
so the query images are made in parallel next to the model, not on the driver. The actors ask for
`eval.cpus_per_actor` CPUs and `eval.gpus_per_actor` GPUs (fractions allowed; on a 2-core machine
give them fractions, or Ray Data has no CPU left), plus the `moon_data` resource when
`ray.use_custom_resources` is on. Rows come back in any order and are put back by `row`.
"""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa

from moon_ray.config import Config

REQUEST_SCHEMA = pa.schema(
    [("row", pa.int64()), ("image", pa.binary()), ("text", pa.string()), ("degrade", pa.string()),
     ("product", pa.bool_())]
)


class EmbedActor:
    """Ray Data actor: holds one encoder; maps a batch of requests to (row, embedding)."""

    def __init__(self, model: str, seed: int, threads: int = 1):
        from moon_ray.models.encoder import get_encoder

        self.encoder = get_encoder(model)
        self.seed = seed
        if "torch" in sys.modules:  # only models that use torch pay for importing it
            sys.modules["torch"].set_num_threads(max(1, threads))

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        return {"row": batch.column("row").to_numpy(), "embedding": embed_batch(self.encoder, batch, self.seed)}


def embed_batch(encoder, batch: pa.Table, seed: int) -> np.ndarray:
    """(N, dim) float32 embeddings of a request table: product rows through `encode_products`, the rest
    through `encode`; images with a `degrade` key are degraded first (deterministically by seed + key)."""
    from moon_ray.eval.degrade import degrade

    images = batch.column("image").to_pylist()
    keys = batch.column("degrade").to_pylist()
    images = [degrade(im, seed, key) if key is not None and im is not None else im
              for im, key in zip(images, keys, strict=True)]
    texts = batch.column("text").to_pylist()
    is_product = np.asarray(batch.column("product").to_pylist(), dtype=bool)
    parts = []
    for rows, fn in ((np.flatnonzero(is_product), encoder.encode_products), (np.flatnonzero(~is_product), encoder.encode)):
        if rows.size:
            parts.append((rows, np.asarray(fn([images[i] for i in rows], [texts[i] for i in rows]), np.float32)))
    vecs = np.zeros((len(texts), parts[0][1].shape[1]), dtype=np.float32)
    for rows, v in parts:
        vecs[rows] = v
    return vecs


def embed_requests(requests: pa.Table, cfg: Config) -> np.ndarray:
    """(N, dim) float32 embeddings of the N requests, in `row` order (rows must be 0..N-1)."""
    import ray

    from moon_ray.infrastructure.resources import DATA, request

    ev = cfg.eval
    n = requests.num_rows
    if n == 0:
        raise ValueError("nothing to embed: the request table is empty")
    requests = requests.select(REQUEST_SCHEMA.names).cast(REQUEST_SCHEMA)
    # about 4 blocks per actor (whole batches each). from_blocks keeps them as they are and reads
    # their metadata on the driver (from_arrow runs a Ray task per block for it).
    per_block = ev.batch_size * max(1, -(-n // (4 * ev.num_actors * ev.batch_size)))
    blocks = [requests.slice(i, per_block) for i in range(0, n, per_block)]
    extra = {"num_gpus": ev.gpus_per_actor} if ev.gpus_per_actor else {}
    ds = ray.data.from_blocks(blocks).map_batches(
        EmbedActor,
        fn_constructor_kwargs={"model": ev.model, "seed": ev.seed, "threads": int(ev.cpus_per_actor)},
        batch_size=ev.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=ev.num_actors),
        num_cpus=ev.cpus_per_actor,
        resources=request(DATA, cfg.ray.use_custom_resources),
        **extra,
    )
    out: np.ndarray | None = None
    seen = np.zeros(n, dtype=bool)
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        rows, vecs = batch["row"], np.asarray(batch["embedding"], dtype=np.float32)
        if out is None:
            out = np.zeros((n, vecs.shape[1]), dtype=np.float32)
        out[rows] = vecs
        seen[rows] = True
    if out is None or not seen.all():
        raise RuntimeError(f"embedding lost rows: {int((~seen).sum())} of {n} came back empty")
    return out
