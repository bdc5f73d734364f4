"""The catalog index behind /v1/search: product embeddings, a FAISS index over them, and their metadata.

    index = CatalogIndex.build(cfg, encoder, model_key)   # embed the catalog's products (image + title)
    index.save("outputs/serve/index-frozen")              # vectors.npy, products.parquet, manifest.json
    index = CatalogIndex.load("outputs/serve/index-frozen", cfg, encoder.dim, model_key)
    hits = index.search(query_vec, k=10, filters={"gender": ["Men"]})

The products are those of `data.output_dir`/products in catalog order (`row`), only the split
`serve.index_split` when set, at most `serve.index_limit` of them, each embedded as a product with
`Encoder.encode_products(images, titles)`, `serve.index_batch_size` at a time. The FAISS index is
`serve.index` (flat: exact; hnsw: `index.hnsw_*` parameters) from moon_ray/infrastructure/index.py; a saved index
keeps the vectors and the FAISS index is rebuilt from them at load (instant for flat, seconds for
HNSW over 10k products), so one saved index serves either kind, on CPU or GPU FAISS.

Filters are exact matches on product attributes; a list means any of its values. With filters, the
candidates are the products that match, scored exactly against their stored vectors (so a filter never
loses results the way an over-fetch of the ANN top-k can); without, the FAISS index answers.

A saved index records the model it was built with; loading it for another model is an error, since
vectors of two models do not share a space.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moon_ray.config import Config, ConfigError
from moon_ray.infrastructure.timing import Stopwatch

META_COLUMNS = ("id", "title", "brand", "article_type", "colour", "gender", "season", "usage", "master_category",
                "sub_category", "material", "year", "split")
FILTER_FIELDS = ("id", "brand", "article_type", "colour", "gender", "season", "usage", "master_category",
                 "sub_category", "material", "split")
FILES = ("manifest.json", "vectors.npy", "products.parquet")
log = logging.getLogger(__name__)


@dataclass
class CatalogIndex:
    vectors: np.ndarray  # (N, D) float32, unit rows
    meta: dict[str, list]  # META_COLUMNS -> N values
    manifest: dict
    index: object  # FAISS index over `vectors`

    @property
    def size(self) -> int:
        return int(self.vectors.shape[0])

    # ---------------------------------------------------------------------------------- building
    @classmethod
    def build(cls, cfg: Config, encoder, model_key: str) -> CatalogIndex:
        """Embed the configured slice of the catalog with `encoder` (minutes for 10k products on 2 CPUs)."""
        table = load_products(cfg)
        n, bs = table.num_rows, cfg.serve.index_batch_size
        vectors = np.zeros((n, encoder.dim), dtype=np.float32)
        clock = Stopwatch()
        for s in range(0, n, bs):
            part = table.slice(s, bs)
            vectors[s : s + part.num_rows] = encoder.encode_products(
                part.column("image").to_pylist(), part.column("title").to_pylist())
            if (s // bs) % 20 == 0:
                log.warning("catalog index: %d / %d products embedded (%.0f s)", s + part.num_rows, n,
                            clock.elapsed())
        meta = table.select(list(META_COLUMNS)).to_pydict()
        manifest = {"model": model_key, "encoder": encoder.name, "dim": int(encoder.dim), "count": n,
                    "catalog": str(Path(cfg.data.output_dir).resolve()), "split": cfg.serve.index_split,
                    "limit": cfg.serve.index_limit, "seconds": round(clock.elapsed(), 1),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        return cls(vectors, meta, manifest, _faiss(vectors, cfg))

    def save(self, path: str | Path) -> Path:
        """Write the index to directory `path` (replaced atomically); `load` reads it back."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from moon_ray.catalog.schema import PRODUCT_SCHEMA

        out = Path(path)
        tmp = out.with_name(out.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        np.save(tmp / "vectors.npy", self.vectors)
        schema = pa.schema([PRODUCT_SCHEMA.field(c) for c in META_COLUMNS])
        pq.write_table(pa.Table.from_pydict(self.meta, schema=schema), tmp / "products.parquet")
        (tmp / "manifest.json").write_text(json.dumps(self.manifest, indent=2))
        if out.exists():
            for f in out.iterdir():
                f.unlink()
            out.rmdir()
        tmp.rename(out)
        return out

    @classmethod
    def load(cls, path: str | Path, cfg: Config, dim: int, model_key: str) -> CatalogIndex:
        """Read a saved index; an error when it was built with another model or is incomplete."""
        import pyarrow.parquet as pq

        root = Path(path)
        missing = [f for f in FILES if not (root / f).exists()]
        if missing:
            raise FileNotFoundError(f"serve.index_dir={root} is not a saved catalog index (missing {missing}); "
                                    "save one with `moon-ray serve --build-index DIR`")
        manifest = json.loads((root / "manifest.json").read_text())
        if manifest.get("model") != model_key or manifest.get("dim") != dim:
            raise ConfigError(f"serve.index_dir={root} was built with model {manifest.get('model')!r} "
                              f"(dim {manifest.get('dim')}), but the served model is {model_key!r} (dim {dim}); "
                              "rebuild it with `moon-ray serve --build-index DIR`")
        vectors = np.load(root / "vectors.npy")
        meta = pq.read_table(root / "products.parquet").to_pydict()
        return cls(vectors, meta, manifest, _faiss(vectors, cfg))

    # ----------------------------------------------------------------------------------- search
    def search(self, query: np.ndarray, k: int, filters: dict[str, list[str]] | None = None) -> list[dict]:
        """The top-k products for one query vector: metadata plus `score` (cosine) and `rank`."""
        from moon_ray.infrastructure.index import search

        q = np.asarray(query, dtype=np.float32).reshape(1, -1)
        if filters:
            candidates = self.matching(filters)
            scores = self.vectors[candidates] @ q[0]
            top = np.argsort(-scores, kind="stable")[:k]
            ids, best = candidates[top], scores[top]
        else:
            best, ids = search(self.index, q, min(k, self.size))
            keep = ids[0] >= 0
            ids, best = ids[0][keep], best[0][keep]
        return [{"rank": r + 1, "score": float(s), **{c: self.meta[c][int(i)] for c in META_COLUMNS}}
                for r, (i, s) in enumerate(zip(ids, best, strict=True))]

    def matching(self, filters: dict[str, list[str]]) -> np.ndarray:
        """Indices of the products whose attributes match every filter (a list: any of its values)."""
        mask = np.ones(self.size, dtype=bool)
        for field, values in filters.items():
            allowed = set(values)
            mask &= np.fromiter((v in allowed for v in self.meta[field]), dtype=bool, count=self.size)
        return np.flatnonzero(mask)


def _faiss(vectors: np.ndarray, cfg: Config):
    from moon_ray.infrastructure.index import build_index

    ix = cfg.index
    return build_index(vectors, cfg.serve.index, ix.hnsw_m, ix.hnsw_ef_construction, ix.hnsw_ef_search)


def load_products(cfg: Config):
    """The catalog's products to index (id, title, image, metadata), in catalog order; a clear error if none."""
    import pyarrow.dataset as ds

    products = Path(cfg.data.output_dir) / "products"
    if not products.is_dir() or not any(products.glob("*.parquet")):
        raise FileNotFoundError(f"no preprocessed catalog at {products}: run `moon-ray preprocess` first, point "
                                "data.output_dir at one, or set serve.index_limit=0 to serve embeddings only")
    dataset = ds.dataset(products, format="parquet")
    split = cfg.serve.index_split
    columns = sorted(set(META_COLUMNS) | {"row", "image"})
    table = dataset.to_table(columns=columns, filter=(ds.field("split") == split) if split else None)
    if table.num_rows == 0:
        found = sorted(set(dataset.to_table(columns=["split"]).column("split").to_pylist()))
        raise ConfigError(f"serve.index_split: no products in split {split!r} under {products} (splits: {found})")
    table = table.sort_by("row")
    if cfg.serve.index_limit is not None:
        table = table.slice(0, cfg.serve.index_limit)
    return table
