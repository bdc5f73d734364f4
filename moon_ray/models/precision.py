"""Training precision: bf16 compute over fp32 master weights, on where the hardware multiplies bf16 fast.

    dtype = compute_dtype("auto", device)        # bf16 on AMX CPUs and bf16 GPUs, else fp32
    store_frozen(model.lm, dtype)                # frozen weights live in bf16 (cast once)
    with compute_weights(model, dtype):          # trainable fp32 weights swapped for bf16 copies
        loss = step(model); loss.backward()      # grads reach the fp32 parameters through the cast

Why not `torch.autocast`: per-op casting re-casts every frozen LM weight at every use (five embedding
passes a step: copy_ 0.32 s of a 3.8 s step), runs norms and softmax in fp32 and converts activations
back and forth, so the 3.3x faster matmuls bought only 1.2x. Here instead:

- frozen weights (the LM's base weights, a frozen vision tower) are *stored* in bf16, cast once;
- trainable weights (LoRA, projector, fusion, residual, MoE head, visual skip) stay fp32 parameters:
  they are the master weights, so AdamW and its state, gradient clipping, DDP's all-reduce,
  checkpoints and exports all stay fp32 and unchanged. `compute_weights` replaces them by bf16 copies
  for one step (one cast per parameter per step, not per use); the backward of that cast turns the
  bf16 gradient into the fp32 `.grad`. The same copies serve the backward pass, so activation
  recomputation (gradient checkpointing) sees the weights the forward saw.
- the embedder returns fp32 embeddings, so InfoNCE logits and the temperature are fp32.

When bf16 does not pay: a CPU without AMX multiplies bf16 through AVX512-BF16 `vdpbf16ps` at most as
fast as fp32 FMAs, and oneDNN's bf16 kernels were measured at about half the fp32 rate there (2048²:
~140 vs ~270 GFLOP/s on 2 threads), so "auto" keeps fp32. `torch.backends.mkldnn`'s bf16 flag is true
on such CPUs, hence the AMX test.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

PRECISIONS = ("auto", "bf16", "fp32")


def bf16_is_fast(device: torch.device) -> bool:
    """True where bf16 matrix multiplies beat fp32: a bf16-capable GPU, or a CPU with AMX tiles."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        return bool(amx and amx())
    return False


def compute_dtype(precision: str, device: torch.device | str) -> torch.dtype:
    """train.precision (auto | bf16 | fp32) -> the dtype the model computes in on `device`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return torch.bfloat16 if bf16_is_fast(torch.device(device)) else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


def store_frozen(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast the parameters without requires_grad to `dtype`, in place; buffers (e.g. rotary
    frequencies, which the LM keeps fp32 on purpose) and trainable parameters are left alone."""
    for p in module.parameters():
        if not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)


@contextlib.contextmanager
def compute_weights(model: nn.Module, dtype: torch.dtype, keep: nn.Module | None = None):
    """Inside the block, every trainable parameter of `model` that is not `dtype` (and not inside
    `keep`) is replaced by a `dtype` copy made on entry; gradients flow to the parameter through the
    cast. Parameters shared by several modules get one copy. Re-entrant: a nested block is a no-op, so
    a step that wraps forward and backward pays for one cast, whatever the number of forward passes."""
    if dtype == torch.float32 or getattr(model, "_compute_copies_active", False):
        yield
        return
    kept = {id(p) for p in keep.parameters()} if keep is not None else set()
    copies: dict[int, torch.Tensor] = {}
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None or not p.requires_grad or p.dtype == dtype or id(p) in kept:
                continue
            if id(p) not in copies:
                copies[id(p)] = p.to(dtype)
            del module._parameters[name]
            setattr(module, name, copies[id(p)])  # a plain attribute: what forward code reads
            swapped.append((module, name, p))
    model._compute_copies_active = True
    try:
        yield
    finally:
        for module, name, p in reversed(swapped):
            delattr(module, name)
            module._parameters[name] = p
        model._compute_copies_active = False
