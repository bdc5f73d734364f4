"""Object-store transport (the CPU default): the trainer puts the payload once; every actor pulls it.

The payload travels as (name, numpy array) pairs: Ray deserialises numpy arrays zero-copy from shared
memory, so an actor reads the weights in place (`from_wire`) instead of unpickling its own copy of
every tensor; only the final copy into the engine's parameters touches the bytes.

A `Payload` wraps the object reference, so it travels to actors unresolved: the rollout pool receives
it, fans it out to its actors with `deliver`, and keeps it for actors that join later.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from moon_ray.infrastructure.timing import PhaseTimer
from moon_ray.weight_sync.base import payload_bytes
from moon_ray.weight_sync.transport import Weights, WeightTransport, register_transport


@dataclass(frozen=True)
class Payload:
    """Weights put once into the object store: `ref` -> list of (name, numpy array)."""

    ref: Any
    mode: str
    bytes: int
    tensors: int

    def items(self) -> list[tuple[str, torch.Tensor]]:
        """Fetch (zero-copy) and view as tensors; call on the receiving side."""
        import ray

        return from_wire(ray.get(self.ref))


def to_wire(items: Weights) -> list[tuple[str, np.ndarray]]:
    """(name, tensor) -> (name, contiguous numpy array) for a zero-copy `ray.put`."""
    return [(name, t.detach().cpu().contiguous().numpy()) for name, t in items]


def from_wire(payload: list) -> list[tuple[str, torch.Tensor]]:
    """The inverse, without copying: tensors viewing the (read-only) object-store buffers. Callers only
    read them (copy_ into parameters, or matmul)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the given NumPy array is not writable"
        return [(name, torch.from_numpy(a) if isinstance(a, np.ndarray) else a) for name, a in payload]


@register_transport("object_store")
class ObjectStoreTransport(WeightTransport):
    """One `ray.put`; every receiver (`update_weights(payload, version)`) pulls and loads it."""

    name = "object_store"

    def put(self, weights: Weights) -> Payload:
        import ray

        wire = to_wire(weights)
        return Payload(ref=ray.put(wire), mode=self.mode, bytes=payload_bytes(wire), tensors=len(wire))

    def deliver(self, payload: Payload, actors: Sequence[Any], version: int) -> list:
        """Hand an existing payload to `actors` (the pool does this for its actors and for new ones)."""
        import ray

        return ray.get([a.update_weights.remote(payload, version) for a in actors])

    def send(self, weights: Weights, actors: Sequence[Any], version: int) -> dict:
        timer = PhaseTimer(prefix="", suffix="_s")
        with timer("put"):
            payload = self.put(weights)
        with timer("pull_load"):
            answers = self.deliver(payload, actors, version)
        t = timer.metrics()
        # a pool answers with how many actors it loaded; a single actor with its new version
        loaded = sum(a["actors"] if isinstance(a, dict) else 1 for a in answers)
        return {"sync_s": t["put_s"] + t["pull_load_s"], **t, "bytes": payload.bytes, "tensors": payload.tensors,
                "actors": loaded, "version": version, "mode": self.mode, "transport": self.name}
