"""The embedder's trainable weights (LoRA, projector, fusion, residual, MoE head, temperature) as one
safetensors file: written by training checkpoints, read by checkpoints and exported models alike.

    <dir>/trainable.safetensors   "model.<param name>" for every parameter with requires_grad,
                                  "temperature.log_tau"
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

FILE = "trainable.safetensors"


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def trainable_state(model: nn.Module, temperature: nn.Module) -> dict[str, torch.Tensor]:
    state = {f"model.{n}": p.detach().cpu().contiguous() for n, p in unwrap(model).named_parameters() if p.requires_grad}
    state["temperature.log_tau"] = temperature.log_tau.detach().cpu().reshape(1)
    return state


def save_trainable(path: Path, model: nn.Module, temperature: nn.Module) -> Path:
    out = Path(path) / FILE
    save_file(trainable_state(model, temperature), str(out))
    return out


def load_trainable(path: Path, model: nn.Module, temperature: nn.Module) -> None:
    """Load trainable weights into model/temperature; every saved tensor must find its parameter."""
    state = load_file(str(Path(path) / FILE))
    params = dict(unwrap(model).named_parameters())
    for key, value in state.items():
        if key == "temperature.log_tau":
            with torch.no_grad():
                temperature.log_tau.copy_(value.reshape(()))
            continue
        name = key.removeprefix("model.")
        if name not in params:
            raise KeyError(f"checkpoint {path}: parameter {name!r} does not exist in the model")
        with torch.no_grad():
            params[name].copy_(value)
