"""MOON3.0 fine-grained residual enhancement.

Projected patch features are added back, through a per-layer linear map and a learnable gate
(tanh, initialised at 0 so the LM starts unchanged), into the visual-token positions of the hidden
states after selected decoder layers — local image detail survives the forward pass.
Implemented with forward hooks, so any Hugging Face decoder works.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualEnhancer(nn.Module):
    """Holds the per-layer maps and gates; `attach(layers)` installs hooks; `context(...)` sets the input."""

    def __init__(self, dim: int, num_layers: int, every: int):
        super().__init__()
        self.layer_ids = [i for i in range(num_layers) if (i + 1) % every == 0 and i + 1 < num_layers] or [0]
        self.maps = nn.ModuleList(nn.Linear(dim, dim) for _ in self.layer_ids)
        self.gates = nn.Parameter(torch.zeros(len(self.layer_ids)))
        self._patches: torch.Tensor | None = None
        self._slots: torch.Tensor | None = None
        self._handles: list = []

    def attach(self, layers: nn.ModuleList) -> None:
        self.detach()
        for slot, idx in enumerate(self.layer_ids):
            self._handles.append(layers[idx].register_forward_hook(self._hook(slot)))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def set_patches(self, patches: torch.Tensor | None, slots: torch.Tensor | None = None) -> None:
        """(B, P, H) projected patch features, or None. `slots` (B·P,) are the flat positions
        (row · length + t) of their tokens in the hidden states the layers see (a packed batch puts
        them anywhere); None: positions [0, P) of each row."""
        self._patches, self._slots = patches, slots

    def _hook(self, slot: int):
        def hook(module, args, output):
            if self._patches is None:
                return output
            hidden = output[0] if isinstance(output, tuple) else output
            b, p, h = self._patches.shape
            slots = self._slots
            if slots is None:
                slots = (torch.arange(b, device=hidden.device)[:, None] * hidden.shape[1]
                         + torch.arange(p, device=hidden.device)).flatten()
            add = torch.tanh(self.gates[slot]) * self.maps[slot](self._patches)
            flat = hidden.reshape(-1, h).index_add(0, slots, add.reshape(-1, h).to(hidden.dtype))
            hidden = flat.view_as(hidden)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return hook
