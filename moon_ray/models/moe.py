"""MOON2.0 modality-driven mixture of experts (the embedding head).

Expert FFNs map the fused state to the embedding. Routing logits are a learned function of the input
plus a learnable expert×objective matrix row for the query modality (text, image, multimodal), so each
modality can prefer its own experts. Top-k experts are kept and renormalised. The auxiliary loss
combines per-input routing entropy (minimised: sparse, confident routing) with the entropy of the mean
expert usage (maximised: no collapsed experts).
"""

from __future__ import annotations

import math

import torch
from torch import nn

MODALITIES = {"text": 0, "image": 1, "multimodal": 2}


class ModalityMoE(nn.Module):
    """x (B, H), modality id -> (y (B, D), aux_loss scalar, probs (B, E))."""

    def __init__(self, dim_in: int, dim_out: int, experts: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(dim_in, experts)
        self.objective = nn.Parameter(torch.zeros(len(MODALITIES), experts))
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim_in, dim_in), nn.GELU(), nn.Linear(dim_in, dim_out)) for _ in range(experts)
        )

    def forward(self, x: torch.Tensor, modality: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.router(x).float() + self.objective[modality].float()  # routing in fp32 (B × E)
        probs = logits.softmax(-1)
        top = probs.topk(self.top_k, dim=-1)
        weights = torch.zeros_like(probs).scatter(-1, top.indices, top.values)
        weights = weights / weights.sum(-1, keepdim=True)
        outs = torch.stack([e(x) for e in self.experts], dim=1)  # (B, E, D), compute dtype
        y = (weights.unsqueeze(-1) * outs.float()).sum(1)  # fp32 out
        return y, routing_aux_loss(probs), probs


def routing_aux_loss(probs: torch.Tensor) -> torch.Tensor:
    """probs (B, E) -> mean per-input entropy − entropy of the mean usage, both / log E (in [-1, 1]).

    Uniform routing for every input gives 1 − 1 = 0; one-hot routing spread evenly over experts gives
    0 − 1 = −1 (the optimum); every input on the same expert gives 0 − 0 = 0.
    """
    e = probs.shape[-1]
    eps = 1e-9
    per_input = -(probs * (probs + eps).log()).sum(-1).mean()
    usage = probs.mean(0)
    balance = -(usage * (usage + eps).log()).sum()
    return (per_input - balance) / math.log(e)
