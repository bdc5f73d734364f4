"""Projector: vision patch features -> the LM's embedding space (visual tokens)."""

from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Module):
    """LayerNorm + 2-layer GELU MLP: (B, P, C_vision) -> (B, P, H_lm)."""

    def __init__(self, vision_dim: int, lm_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(vision_dim)
        self.mlp = nn.Sequential(nn.Linear(vision_dim, lm_dim), nn.GELU(), nn.Linear(lm_dim, lm_dim))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(patches))
