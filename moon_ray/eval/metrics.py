"""Retrieval and classification metrics: pure numpy functions, per query, binary relevance.

Conventions shared by every function:

- `ranked`: (Q, K) int array of product indices, best first; -1 pads rows with fewer than K results
  (a pool smaller than K). K may be smaller or larger than the k asked for.
- `relevant`: a sequence of Q collections of product indices. A query with no relevant product has
  no defined value: its entry is NaN, and `mean_defined` leaves it out.
- Ties in scores are broken by the lower index (`top_k`, `sort_hits`), so rankings are deterministic.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """(Q, N) scores -> (Q, min(k, N)) indices, highest score first, ties to the lower index."""
    scores = np.asarray(scores)
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def sort_hits(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Re-order (Q, K) search hits by (score desc, id asc); padded hits (id -1) go last."""
    scores = np.where(ids < 0, -np.inf, np.asarray(scores, dtype=np.float64))
    big = np.where(ids < 0, np.iinfo(np.int64).max, ids)
    order = np.lexsort((big, -scores), axis=1) if scores.size else np.zeros(ids.shape, int)
    return np.take_along_axis(ids, order, axis=1)


def exclude(ranked: np.ndarray, drop: Sequence[int], k: int | None = None) -> np.ndarray:
    """Remove index `drop[q]` from row q (the query's own product), keep the order; (Q, k or K-1).

    Rows that did not contain `drop[q]` lose their last entry instead, so every row has the same
    length; pad with -1 where a row runs out.
    """
    ranked = np.asarray(ranked)
    width = ranked.shape[1] - 1 if k is None else k
    out = np.full((ranked.shape[0], width), -1, dtype=np.int64)
    for q, (row, d) in enumerate(zip(ranked, drop, strict=True)):
        kept = row[row != d][:width]
        out[q, : kept.size] = kept
    return out


def _gains(ranked: np.ndarray, relevant: Sequence[Collection[int]], k: int) -> list[np.ndarray | None]:
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or ranked.shape[0] != len(relevant):
        raise ValueError(f"ranked must be (Q, K) with Q = {len(relevant)} queries, got {ranked.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    out: list[np.ndarray | None] = []
    for row, rel in zip(ranked[:, :k], relevant, strict=True):
        out.append(np.isin(row, np.fromiter(rel, dtype=np.int64)) if len(rel) else None)
    return out


def ndcg_at_k(ranked: np.ndarray, relevant: Sequence[Collection[int]], k: int) -> np.ndarray:
    """(Q,) nDCG@k with binary gains: Σ_{rank r ≤ k, relevant} 1/log2(r+1) over the ideal,
    Σ_{r ≤ min(k, |relevant|)} 1/log2(r+1). NaN where a query has no relevant product."""
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    out = np.full(len(relevant), np.nan)
    for q, (g, rel) in enumerate(zip(_gains(ranked, relevant, k), relevant, strict=True)):
        if g is not None:
            out[q] = float(discount[: g.size] @ g) / float(discount[: min(k, len(rel))].sum())
    return out


def hit_at_k(ranked: np.ndarray, relevant: Sequence[Collection[int]], k: int) -> np.ndarray:
    """(Q,) 1.0 if any relevant product is in the top k, else 0.0; NaN with no relevant product."""
    return np.array([np.nan if g is None else float(g.any()) for g in _gains(ranked, relevant, k)])


def recall_at_k(ranked: np.ndarray, relevant: Sequence[Collection[int]], k: int) -> np.ndarray:
    """(Q,) share of the relevant products found in the top k (= hit@k with one relevant product)."""
    gains = _gains(ranked, relevant, k)
    return np.array([np.nan if g is None else g.sum() / len(r) for g, r in zip(gains, relevant, strict=True)])


def precision_at_k(ranked: np.ndarray, relevant: Sequence[Collection[int]], k: int) -> np.ndarray:
    """(Q,) relevant products in the top k divided by k — trec_eval's P@k (what BEIR, and so Marqo's
    KAGL leaderboard, report): the divisor is k even when fewer than k products were retrieved."""
    return np.array([np.nan if g is None else g.sum() / k for g in _gains(ranked, relevant, k)])


def mrr_at_k(ranked: np.ndarray, relevant: Sequence[Collection[int]], k: int) -> np.ndarray:
    """(Q,) 1 / rank of the first relevant product within the top k, 0 when none is there.

    Marqo's `utils/metrics.py::mrr` walks only the retrieved list (their top max(Ks) = 10), so their
    MRR is MRR@10; NaN (left out of the mean) only where a query has no relevant product at all."""
    out = np.full(len(relevant), np.nan)
    for q, g in enumerate(_gains(ranked, relevant, k)):
        if g is not None:
            hits = np.flatnonzero(g)
            out[q] = 1.0 / (hits[0] + 1) if hits.size else 0.0
    return out


def bootstrap_ci(per_query: np.ndarray, n: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of the defined per-query values.

    Resamples the queries with replacement `n` times (numpy Generator seeded by `seed`), takes the mean
    of each resample and returns the (1 - level)/2 and (1 + level)/2 quantiles. NaN entries (undefined
    queries) are dropped first; (nan, nan) when none is left."""
    values = np.asarray(per_query, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    step = max(1, 2_000_000 // values.size)  # resamples per chunk: bounded memory for large query sets
    means = np.concatenate([values[rng.integers(0, values.size, size=(min(step, n - i), values.size))].mean(axis=1)
                            for i in range(0, n, step)])
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def recall_curve(ranked: np.ndarray, relevant: Sequence[Collection[int]], ks: Sequence[int]) -> list[float]:
    """Mean recall@k for each k in `ks` (over queries with a relevant product)."""
    return [mean_defined(recall_at_k(ranked, relevant, k)) for k in ks]


def mean_defined(values: np.ndarray) -> float:
    """Mean over the defined (non-NaN) entries; NaN when there are none."""
    values = np.asarray(values, dtype=np.float64)
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def zero_shot_correct(scores: np.ndarray, labels: np.ndarray, atol: float = 1e-6) -> np.ndarray:
    """(N,) tie-aware correctness of nearest-label classification, per item.

    scores: (N, L) similarity of each item to each label prompt; labels: (N,) true label index.
    An item whose true label is among the t labels tied for the best score (within `atol`) counts
    1/t — the expected accuracy of breaking the tie at random. So a model that scores every label the
    same gets chance (1/L), never the frequency of whichever label happens to come first.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"scores must be (N, L) with N = {labels.shape[0]}, got {scores.shape}")
    if scores.shape[0] == 0:
        return np.zeros(0)
    tied = scores >= scores.max(axis=1, keepdims=True) - atol
    return tied[np.arange(len(labels)), labels] / tied.sum(axis=1)


def zero_shot_accuracy(scores: np.ndarray, labels: np.ndarray, atol: float = 1e-6) -> float:
    """Mean of `zero_shot_correct`: tie-aware accuracy (NaN with no items)."""
    correct = zero_shot_correct(scores, labels, atol)
    return float(correct.mean()) if correct.size else float("nan")


def tie_fraction(scores: np.ndarray, atol: float = 1e-6) -> float:
    """Share of rows of (N, L) scores whose best score is shared by more than one label."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape[0] == 0:
        return float("nan")
    tied = scores >= scores.max(axis=1, keepdims=True) - atol
    return float((tied.sum(axis=1) > 1).mean())
