"""FAISS inner-product indexes over L2-normalised embeddings (so inner product = cosine).

    index = build_index(product_vecs, kind="hnsw", m=32, ef_construction=200, ef_search=128)
    scores, ids = search(index, query_vecs, k=10)

- `flat`: `IndexFlatIP`, exact.
- `hnsw`: `IndexHNSWFlat(dim, M, METRIC_INNER_PRODUCT)` with efConstruction / efSearch, approximate.

With a GPU FAISS build and `faiss.get_num_gpus() > 0` the flat index is moved to the GPUs
(`index_cpu_to_all_gpus`); FAISS has no GPU HNSW, so HNSW stays on the CPU. Without GPUs the same
code runs on the CPU. `faiss` is imported inside the functions.
"""

from __future__ import annotations

import numpy as np

KINDS = ("flat", "hnsw")


def build_index(
    vectors: np.ndarray,
    kind: str = "flat",
    m: int = 32,
    ef_construction: int = 200,
    ef_search: int = 128,
    use_gpu: bool | None = None,
):
    """An index holding (N, D) float32 `vectors`; row i gets id i. use_gpu None: when FAISS sees GPUs."""
    import faiss

    x = _as_matrix(vectors)
    if kind == "flat":
        index = faiss.IndexFlatIP(x.shape[1])
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(x.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    else:
        raise ValueError(f"unknown index kind {kind!r}: expected one of {KINDS}")
    if use_gpu is None:
        use_gpu = gpu_count() > 0
    if use_gpu and kind == "flat":
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(x)
    return index


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(Q, k) scores (inner products, best first) and (Q, k) int64 ids; -1 where fewer than k exist."""
    q = _as_matrix(queries)
    if q.shape[0] == 0:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    scores, ids = index.search(q, k)
    return scores, ids.astype(np.int64)


def gpu_count() -> int:
    """GPUs visible to FAISS (0 with faiss-cpu)."""
    import faiss

    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def _as_matrix(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a (N, D) matrix of vectors, got shape {x.shape}")
    return x
