"""MOON3.0 fine-grained residual enhancement.

Projected patch features are added back, through a per-layer linear map and a learnable gate
(tanh, initialised at 0 so the LM starts unchanged), into the visual-token positions of the hidden
states after selected decoder layers — local image detail survives the forward pass.
Implemented with forward hooks, so any Hugging Face decoder works.

With a fine grid (`model.residual_grid`, e.g. EfficientNet's full 7×7) the layers read what the
visual tokens summarise: each visual token's hidden state attends (one head, per-layer query/key maps)
over the projected fine patches of its own region (`vision.cell_mask`; the global token over all of
them), and the gated read-out is added back. The coarse tokens then get local detail they lost to
pooling, not a second copy of themselves.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualEnhancer(nn.Module):
    """Holds the per-layer maps and gates; `attach(layers)` installs hooks; `context(...)` sets the input."""

    def __init__(self, dim: int, num_layers: int, every: int, fine_mask: torch.Tensor | None = None):
        """fine_mask (P, F) bool: which of the F fine patches each of the P visual tokens reads (None:
        the visual tokens' own projected features are added back, one to one)."""
        super().__init__()
        self.layer_ids = [i for i in range(num_layers) if (i + 1) % every == 0 and i + 1 < num_layers] or [0]
        self.maps = nn.ModuleList(nn.Linear(dim, dim) for _ in self.layer_ids)
        self.gates = nn.Parameter(torch.zeros(len(self.layer_ids)))
        self.fine = fine_mask is not None
        if self.fine:
            self.register_buffer("fine_mask", fine_mask, persistent=False)
            self.queries = nn.ModuleList(nn.Linear(dim, dim) for _ in self.layer_ids)
            self.keys = nn.ModuleList(nn.Linear(dim, dim) for _ in self.layer_ids)
        self._patches: torch.Tensor | None = None
        self._fine: torch.Tensor | None = None
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

    def set_patches(self, patches: torch.Tensor | None, slots: torch.Tensor | None = None,
                    fine: torch.Tensor | None = None) -> None:
        """(B, P, H) projected patch features, or None. `slots` (B·P,) are the flat positions
        (row · length + t) of their tokens in the hidden states the layers see (a packed batch puts
        them anywhere); None: positions [0, P) of each row. `fine` (B, F, H): the projected fine grid
        (needed when built with a fine_mask)."""
        if patches is not None and self.fine and fine is None:
            raise ValueError("residual enhancement over a fine grid needs the fine patches (model.residual_grid)")
        self._patches, self._slots, self._fine = patches, slots, fine

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
            flat = hidden.reshape(-1, h)
            if self.fine:
                add = torch.tanh(self.gates[slot]) * self._read_fine(slot, flat.index_select(0, slots).view(b, p, h))
            else:
                add = torch.tanh(self.gates[slot]) * self.maps[slot](self._patches)
            flat = flat.index_add(0, slots, add.reshape(-1, h).to(hidden.dtype))
            hidden = flat.view_as(hidden)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return hook

    def _read_fine(self, slot: int, vis_hidden: torch.Tensor) -> torch.Tensor:
        """(B, P, H) hidden states of the visual tokens -> (B, P, H): each one's attention read-out over
        the fine patches of its region (softmax in fp32)."""
        fine = self._fine.to(vis_hidden.dtype)
        q, k = self.queries[slot](vis_hidden), self.keys[slot](fine)
        scores = (q @ k.transpose(1, 2)).float() / q.shape[-1] ** 0.5
        scores = scores.masked_fill(~self.fine_mask, torch.finfo(scores.dtype).min)
        return scores.softmax(-1).to(fine.dtype) @ self.maps[slot](fine)
