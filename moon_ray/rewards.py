"""Reward functions for reasoning traces, as plain callables over tensors / strings.

The main reward (MOON3.0): how well the product's embedding *computed with trace g* retrieves the
product for its own queries against hard candidates (the batch plus a bank of catalog neighbours,
train/negatives.py) — the log-softmax of the positive — plus a format *penalty*: 0 for a well-formed
trace, −weight for a broken one (too short or long, the title repeated or copied, degenerate
repetition). A good trace collects nothing from the format term, so group-normalised advantages come
from the contrastive part.
"""

from __future__ import annotations

import re

import torch

_WORD = re.compile(r"[a-z0-9]+")


def contrastive_reward(
    trace_products: torch.Tensor, queries: torch.Tensor, negatives: torch.Tensor, temperature: float,
    exclude: torch.Tensor | None = None, query_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-trace retrieval score.

    trace_products (B, G, D): product b embedded with its trace g (unit rows); queries (B, Q, D): the
    product's Q queries (text, image, image+text, attribute queries; unit rows); negatives (N, D):
    candidate products (unit rows); exclude (B, N) or (B, Q, N) bool marks candidates to leave out for
    product b (for every query, or per query: b's own trace-free embedding, other products that answer
    the query too); query_mask (B, Q) bool: the queries product b has (None: all). Returns (B, G): the
    mean over b's queries of log softmax of the positive among [positive, negatives], logits =
    cosine / temperature.
    """
    pos = torch.einsum("bgd,bqd->bgq", trace_products, queries) / temperature  # (B, G, Q)
    neg = torch.einsum("nd,bqd->bqn", negatives, queries) / temperature  # (B, Q, N)
    if exclude is not None:
        neg = neg.masked_fill(exclude if exclude.dim() == 3 else exclude.unsqueeze(1), torch.finfo(neg.dtype).min)
    neg = neg.unsqueeze(1).expand(-1, pos.shape[1], -1, -1)  # (B, G, Q, N)
    logits = torch.cat([pos.unsqueeze(-1), neg], dim=-1)
    per_query = torch.log_softmax(logits, dim=-1)[..., 0]  # (B, G, Q)
    if query_mask is None:
        return per_query.mean(-1)
    m = query_mask.to(per_query.dtype).unsqueeze(1)  # (B, 1, Q)
    return (per_query * m).sum(-1) / m.sum(-1).clamp(min=1.0)


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words of `text`."""
    return _WORD.findall(text.lower())


def broken_reason(trace: str, title: str, min_words: int = 3, max_words: int = 40) -> str | None:
    """Why `trace` is broken, or None when it is well-formed: `length` (outside min..max words),
    `title_repeated` (the title twice or more), `title_copy` (no word beyond the title's), `repetition`
    (fewer than half its words distinct)."""
    w = words(trace)
    if not (min_words <= len(w) <= max_words):
        return "length"
    t = " ".join(words(title or ""))
    if t and " ".join(w).count(t) >= 2:
        return "title_repeated"
    if title and set(w) <= set(words(title)):
        return "title_copy"
    if len(set(w)) / len(w) < 0.5:
        return "repetition"
    return None


def format_penalty(trace: str, title: str, weight: float = 0.1, min_words: int = 3, max_words: int = 40) -> float:
    """0 for a well-formed trace, −weight for a broken one (`broken_reason`)."""
    return -weight if broken_reason(trace, title, min_words, max_words) else 0.0


def format_reward(trace: str, title: str, min_words: int = 3, max_words: int = 40, weight: float = 0.1) -> float:
    """The older symmetric term: `weight` for a well-formed trace, −weight for a broken one."""
    return weight if broken_reason(trace, title, min_words, max_words) is None else -weight


def within_group_std(values: torch.Tensor) -> float:
    """values (B, G) -> mean over products of the (population) std across the group's G traces: the
    part of a reward that can move group-normalised advantages."""
    return float(values.std(dim=1, unbiased=False).mean())
