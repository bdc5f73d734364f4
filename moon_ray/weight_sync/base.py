"""Weights as iterators of (name, tensor) with Hugging Face causal-LM names.

Two payloads leave the trainer:
- "merged": for each LoRA-adapted linear layer, W + scale · B @ A (full-size); every other weight is
  unchanged since the engines were built from the same base model, so only those are sent.
- "adapter": only the LoRA A/B matrices (tiny); the receiving side merges them into its cached copy
  of the base weights (`merge_adapter`) before loading.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


def _lora_layers(model: nn.Module):
    """(HF weight name, LoRA layer) for every PEFT LoRA linear inside `model` (a PEFT model)."""
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "base_layer") and module.lora_A:
            clean = name.removeprefix("base_model.model.")
            yield f"{clean}.weight", module


def merged_weights(lm: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Merged LoRA weights of a PEFT-wrapped causal LM; nothing is modified in place."""
    found = False
    for name, layer in _lora_layers(lm):
        adapter = layer.active_adapters[0]
        base = layer.base_layer.weight.detach()
        yield name, (base + layer.get_delta_weight(adapter).detach()).to(torch.float32).cpu()
        found = True
    if not found:  # no adapters: full fine-tuning, send every parameter
        for name, p in lm.named_parameters():
            yield name, p.detach().to(torch.float32).cpu()


def adapter_weights(lm: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """LoRA tensors as ('<weight name>::A', A), ('::B', B·scale) — B pre-scaled so merge is W + B @ A."""
    for name, layer in _lora_layers(lm):
        adapter = layer.active_adapters[0]
        yield f"{name}::A", layer.lora_A[adapter].weight.detach().float().cpu()
        yield f"{name}::B", (layer.lora_B[adapter].weight.detach() * layer.scaling[adapter]).float().cpu()


def merge_adapter(base: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """base weight + B @ A for every adapted weight; `base` holds the untouched base weights."""
    for key in adapter:
        if key.endswith("::A"):
            name = key[: -len("::A")]
            if name not in base:
                raise KeyError(f"adapter weight {name!r} has no base weight")
            yield name, base[name] + adapter[f"{name}::B"] @ adapter[key]


def payload_bytes(items: list) -> int:
    """Bytes of (name, tensor or numpy array) pairs."""
    return sum(t.nbytes if hasattr(t, "nbytes") else t.numel() * t.element_size() for _, t in items)
