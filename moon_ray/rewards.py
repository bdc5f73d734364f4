"""Reward functions for reasoning traces, as plain callables over tensors / strings.

The main reward (MOON3.0): how well the product's embedding *computed with trace g* retrieves the
product for its own queries against the batch — the log-softmax of the positive — plus a small
format reward that keeps traces short, non-empty and not a copy of the title.
"""

from __future__ import annotations

import torch


def contrastive_reward(
    trace_products: torch.Tensor, queries: torch.Tensor, negatives: torch.Tensor, temperature: float,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-trace retrieval score.

    trace_products (B, G, D): product b embedded with its trace g (unit rows); queries (B, Q, D): the
    product's Q queries (text, image, image+text; unit rows); negatives (N, D): the other products of
    the batch (unit rows); exclude (B, N) bool marks negatives to leave out for product b (e.g. b's
    own trace-free embedding). Returns (B, G): the mean over queries of log softmax of the positive
    among [positive, negatives], logits = cosine / temperature.
    """
    pos = torch.einsum("bgd,bqd->bgq", trace_products, queries) / temperature  # (B, G, Q)
    neg = torch.einsum("nd,bqd->bqn", negatives, queries) / temperature  # (B, Q, N)
    if exclude is not None:
        neg = neg.masked_fill(exclude.unsqueeze(1), torch.finfo(neg.dtype).min)
    neg = neg.unsqueeze(1).expand(-1, pos.shape[1], -1, -1)  # (B, G, Q, N)
    logits = torch.cat([pos.unsqueeze(-1), neg], dim=-1)
    return torch.log_softmax(logits, dim=-1)[..., 0].mean(-1)


def format_reward(trace: str, title: str, min_words: int = 3, max_words: int = 40, weight: float = 0.1) -> float:
    """`weight` if the trace has min_words..max_words words and is not the title repeated, else −weight."""
    words = trace.split()
    if not (min_words <= len(words) <= max_words):
        return -weight
    low = trace.lower()
    if title and low.count(title.lower()) >= 2:
        return -weight
    distinct = len(set(w.lower() for w in words)) / len(words)
    return weight if distinct >= 0.5 else -weight
