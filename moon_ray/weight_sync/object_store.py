"""Object-store broadcast (CPU): the trainer puts the payload once; every rollout actor pulls it.

The payload travels as (name, numpy array) pairs: Ray deserialises numpy arrays zero-copy from shared
memory, so an actor reads the weights in place (`from_wire`) instead of unpickling its own copy of
every tensor; only the final copy into the engine's parameters touches the bytes.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch
from torch import nn

from moon_ray.weight_sync.base import adapter_weights, merged_weights, payload_bytes


def make_payload(lm: nn.Module, mode: str) -> list[tuple[str, np.ndarray]]:
    if mode == "merged":
        return to_wire(merged_weights(lm))
    if mode == "adapter":
        return to_wire(adapter_weights(lm))
    raise ValueError(f"weight sync mode must be merged or adapter, got {mode!r}")


def to_wire(items) -> list[tuple[str, np.ndarray]]:
    """(name, tensor) -> (name, contiguous numpy array) for a zero-copy `ray.put`."""
    return [(name, t.detach().cpu().contiguous().numpy()) for name, t in items]


def from_wire(payload: list) -> list[tuple[str, torch.Tensor]]:
    """The inverse, without copying: tensors viewing the (read-only) object-store buffers. Callers only
    read them (copy_ into parameters, or matmul)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the given NumPy array is not writable"
        return [(name, torch.from_numpy(a) if isinstance(a, np.ndarray) else a) for name, a in payload]


def broadcast(lm: nn.Module, actors: list, version: int, mode: str = "merged") -> dict:
    """Push the LM's weights to every actor (each has `update_weights(payload, version, mode)`)."""
    import ray

    t0 = time.perf_counter()
    payload = make_payload(lm, mode)
    ref = ray.put(payload)
    t_put = time.perf_counter()
    ray.get([a.update_weights.remote(ref, version, mode) for a in actors])
    done = time.perf_counter()
    return {"sync_s": done - t0, "put_s": t_put - t0, "pull_load_s": done - t_put, "bytes": payload_bytes(payload),
            "tensors": len(payload), "actors": len(actors), "version": version, "mode": mode}
