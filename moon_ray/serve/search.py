"""The catalog index behind /v1/search: product vectors, a FAISS index over them, and their metadata.

    index = CatalogIndex.load("outputs/train/export-index", cfg, identity)   # a prebuilt artifact (seconds)
    index = CatalogIndex.build(cfg, encoder, identity)    # the fallback: embed the catalog at start (minutes)
    hits = index.search(query_vec, k=10, filters={"gender": ["Men"]})

The index is an artifact built once by `moon-ray index` (a Ray Data job, moon_ray/eval/index_job.py)
and loaded by every replica; its format, the model identity it records and the trace policy are in
moon_ray/eval/index_artifact.py. Loading checks the identity: an index built by another model is a
ConfigError naming both. `build` is the fallback when no index exists (serve.index_build_at_start):
the replica's own model process embeds `serve.index_batch_size` products per call with the same
`embed_products` as the job, so both give the same vectors.

The FAISS index is `serve.index` (flat: exact; hnsw: `index.hnsw_*`): the saved HNSW graph is read when
its parameters match, else one is built from the vectors (flat: instant). Filters are exact matches on
product attributes; a list means any of its values. With filters, the candidates are the products that
match, scored exactly against their stored vectors (so a filter never loses results the way an
over-fetch of the ANN top-k can); without, the FAISS index answers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moon_ray.config import Config
from moon_ray.eval.index_artifact import (
    FILTER_FIELDS,  # noqa: F401  (re-exported for the API)
    META_COLUMNS,
    TRACE_COLUMN,
    catalog_fingerprint,
    check_identity,
    faiss_index,
    load_products,
    make_manifest,
    product_meta,
    read_index_dir,
    stored_traces,
    trace_summary,
    write_index_dir,
)
from moon_ray.infrastructure.timing import Stopwatch

log = logging.getLogger(__name__)


@dataclass
class CatalogIndex:
    vectors: np.ndarray  # (N, D) float32, unit rows
    meta: dict[str, list]  # META_COLUMNS (+ reasoning) -> N values
    manifest: dict
    index: object  # FAISS index over `vectors`
    path: str | None = None  # where it was loaded from (None: built at start)

    @property
    def size(self) -> int:
        return int(self.vectors.shape[0])

    def describe(self) -> dict:
        """What /readyz and /metrics say about the index."""
        ident, traces = self.manifest.get("identity", {}), self.manifest.get("traces", {})
        return {"size": self.size, "path": self.path, "built_by": self.manifest.get("built_by"),
                "model": ident.get("name"), "fingerprint": (ident.get("fingerprint") or "")[:12],
                "created": self.manifest.get("created"), "trace_policy_versions": traces.get("policy_versions", [])}

    # ---------------------------------------------------------------------------------- building
    @classmethod
    def build(cls, cfg: Config, encoder, identity: dict) -> CatalogIndex:
        """The fallback: embed the configured catalog slice with `encoder` (minutes for 10k products on 2 CPUs).

        `encoder.embed_products(images, titles, traces)` -> (vectors, traces used | None), as the job's."""
        table = load_products(cfg)
        n, bs = table.num_rows, cfg.serve.index_batch_size
        stored, mask, told = stored_traces(table, identity)
        if told:
            log.warning("catalog index at start: %s", told)
        vectors = np.zeros((n, encoder.dim), dtype=np.float32)
        used: list[str] | None = None
        clock = Stopwatch()
        for s in range(0, n, bs):
            part = table.slice(s, bs)
            vecs, traces = encoder.embed_products(part.column("image").to_pylist(), part.column("title").to_pylist(),
                                                  stored[s : s + bs] if stored is not None else None)
            vectors[s : s + part.num_rows] = vecs
            if traces is not None:
                used = (used or [""] * n)
                used[s : s + part.num_rows] = traces
            if (s // bs) % 20 == 0:
                log.warning("catalog index at start: %d / %d products embedded (%.0f s); build it once with "
                            "`moon-ray index` instead", s + part.num_rows, n, clock.elapsed())
        manifest = make_manifest(cfg, table, identity, encoder.dim,
                                 trace_summary(table, used, identity, mask if used is not None else None),
                                 built_by="replica start (fallback)", seconds=clock.elapsed())
        return cls(vectors, product_meta(table, used), manifest, faiss_index(vectors, cfg))

    def save(self, path: str | Path) -> Path:
        """Write the artifact (a CPU FAISS index is saved with it); `load` reads it back."""
        from moon_ray.infrastructure.index import build_index

        kind = self.manifest["faiss"]["kind"]
        cpu = build_index(self.vectors, kind, self.manifest["faiss"]["hnsw_m"],
                          self.manifest["faiss"]["hnsw_ef_construction"], use_gpu=False)
        return write_index_dir(path, self.vectors, self.meta, self.manifest, cpu)

    @classmethod
    def load(cls, path: str | Path, cfg: Config, identity: dict) -> CatalogIndex:
        """Read a saved index; a ConfigError when another model built it, FileNotFoundError when incomplete."""
        root = Path(path)
        manifest, vectors, meta = read_index_dir(root)
        check_identity(manifest, identity, root, cfg.serve.model)
        here = catalog_fingerprint(cfg.data.output_dir)
        built = manifest.get("catalog", {}).get("shards")
        if here is not None and built is not None and here != built:
            log.warning("the catalog index at %s was built from other product shards than those now in %s; "
                        "rebuild it with `moon-ray index` if the catalog changed", root, cfg.data.output_dir)
        return cls(vectors, meta, manifest, faiss_index(vectors, cfg, root, manifest), str(root))

    # ----------------------------------------------------------------------------------- search
    def search(self, query: np.ndarray, k: int, filters: dict[str, list[str]] | None = None) -> list[dict]:
        """The top-k products for one query vector: metadata plus `score` (cosine) and `rank` (and the
        product's `reasoning` trace when the index embedded one)."""
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
        columns = [*META_COLUMNS, *([TRACE_COLUMN] if TRACE_COLUMN in self.meta else [])]
        return [{"rank": r + 1, "score": float(s), **{c: self.meta[c][int(i)] for c in columns}}
                for r, (i, s) in enumerate(zip(ids, best, strict=True))]

    def matching(self, filters: dict[str, list[str]]) -> np.ndarray:
        """Indices of the products whose attributes match every filter (a list: any of its values)."""
        mask = np.ones(self.size, dtype=bool)
        for field, values in filters.items():
            allowed = set(values)
            mask &= np.fromiter((v in allowed for v in self.meta[field]), dtype=bool, count=self.size)
        return np.flatnonzero(mask)
