"""Contrastive losses: pure tensor functions (shapes in the docstrings), tested against hand values.

The general form is a multi-positive, weighted InfoNCE: for query i with candidate set j,

    loss_i = -log( Σ_{j ∈ P(i)} exp(s_ij / τ) / Σ_j w_ij · exp(s_ij / τ) )

where P(i) are i's positives (its own product; for an attribute text query every product with the
same attributes) and w_ij = β for hard negatives (same category, not positive), 1 otherwise
(β = 1 is plain InfoNCE). Positives always have weight 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    positives: torch.Tensor,
    temperature: float | torch.Tensor,
    hard_negatives: torch.Tensor | None = None,
    hard_weight: float = 1.0,
) -> torch.Tensor:
    """Mean multi-positive InfoNCE.

    queries (B, D) and candidates (N, D), L2-normalised; positives (B, N) bool with ≥1 True per row;
    hard_negatives (B, N) bool (ignored where positive); temperature scalar > 0. Returns a scalar.
    """
    if positives.shape != (queries.shape[0], candidates.shape[0]):
        raise ValueError(f"positives {tuple(positives.shape)} != (B={queries.shape[0]}, N={candidates.shape[0]})")
    if not bool(positives.any(dim=1).all()):
        raise ValueError("every query needs at least one positive")
    logits = queries @ candidates.T / temperature
    if hard_negatives is not None and hard_weight != 1.0:
        boost = (hard_negatives & ~positives).to(logits.dtype) * torch.log(torch.tensor(hard_weight, dtype=logits.dtype))
        logits_all = logits + boost
    else:
        logits_all = logits
    neg_inf = torch.finfo(logits.dtype).min
    log_pos = torch.logsumexp(logits.masked_fill(~positives, neg_inf), dim=1)
    log_all = torch.logsumexp(logits_all, dim=1)
    return (log_all - log_pos).mean()


def identity_positives(batch: int, total: int, offset: int = 0, device=None) -> torch.Tensor:
    """(batch, total) bool: query i's positive is candidate offset + i (its own product)."""
    pos = torch.zeros(batch, total, dtype=torch.bool, device=device)
    pos[torch.arange(batch, device=device), offset + torch.arange(batch, device=device)] = True
    return pos


def key_positives(query_keys: torch.Tensor, candidate_keys: torch.Tensor) -> torch.Tensor:
    """query_keys (B,), candidate_keys (N,) int64 -> (B, N) bool: same key (e.g. attribute hash)."""
    return query_keys.unsqueeze(1) == candidate_keys.unsqueeze(0)


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """Row i of a (B, D) pairs with row i of b (B, D): mean of a→b and b→a InfoNCE (CLIP loss)."""
    pos = identity_positives(a.shape[0], b.shape[0], device=a.device)
    return 0.5 * (info_nce(a, b, pos, temperature) + info_nce(b, a, pos, temperature))


def matryoshka_info_nce(
    queries_raw: torch.Tensor, candidates_raw: torch.Tensor, dims: tuple[int, ...], **kwargs
) -> torch.Tensor:
    """Mean of `info_nce` over Matryoshka prefixes: rows sliced to d and re-normalised, for d in dims.

    queries_raw (B, D) and candidates_raw (N, D) need not be normalised.
    """
    losses = [
        info_nce(F.normalize(queries_raw[:, :d], dim=-1), F.normalize(candidates_raw[:, :d], dim=-1), **kwargs)
        for d in dims
    ]
    return torch.stack(losses).mean()


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x (B, …) from every DDP rank in rank order, keeping gradients to the local part.

    Without an initialised process group (single process) it returns x.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x from every rank (no gradient): labels, keys."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)
