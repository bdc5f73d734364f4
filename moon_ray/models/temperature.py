"""The contrastive temperature τ, a one-parameter module saved with the model's trainable weights."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Temperature(nn.Module):
    """τ = exp(log_τ), clamped to [0.01, 1]; learnable or fixed."""

    def __init__(self, init: float, learn: bool):
        super().__init__()
        self.log_tau = nn.Parameter(torch.tensor(float(np.log(init))), requires_grad=learn)

    def forward(self) -> torch.Tensor:
        return self.log_tau.exp().clamp(0.01, 1.0)
