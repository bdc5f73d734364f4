"""MOON3.0 multi-head modality fusion.

Several heads attend over the *raw* signals — projected visual patch features and the title's token
embeddings (before the LM mixes them) — with a query made from the LM's pooled state; each head's
read-out is gated (sigmoid of a function of the pooled state and the read-out) and added back to the
pooled state. A long reasoning trace therefore cannot dilute what the image and title say: their raw
evidence re-enters after pooling.
"""

from __future__ import annotations

import torch
from torch import nn


class ModalityFusion(nn.Module):
    """pooled (B, H), raw signals (B, N, H) with mask (B, N) -> fused (B, H)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"fusion: dim {dim} not divisible by heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.head_queries = nn.Parameter(torch.randn(heads, self.head_dim) * 0.02)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.gate = nn.Linear(2 * self.head_dim, 1)
        nn.init.constant_(self.gate.bias, -2.0)  # heads start mostly closed

    def forward(self, pooled: torch.Tensor, raw: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (fused (B, H), gates (B, heads))."""
        b, n, d = raw.shape
        q = self.q(self.norm_q(pooled)).view(b, self.heads, self.head_dim) + self.head_queries
        k, v = self.kv(self.norm_kv(raw)).view(b, n, 2, self.heads, self.head_dim).unbind(2)
        scores = torch.einsum("bhd,bnhd->bhn", q, k).float() / self.head_dim**0.5  # softmax in fp32 (tiny)
        scores = scores.masked_fill(~mask.bool().unsqueeze(1), torch.finfo(scores.dtype).min)
        read = torch.einsum("bhn,bnhd->bhd", scores.softmax(-1).to(v.dtype), v)  # (B, heads, head_dim)
        gates = torch.sigmoid(self.gate(torch.cat([q, read], dim=-1))).squeeze(-1)  # (B, heads)
        fused = pooled + self.out((gates.unsqueeze(-1) * read).reshape(b, d))
        return fused, gates
