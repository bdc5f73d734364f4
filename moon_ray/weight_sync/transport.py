"""One interface for moving weights from a trainer to rollout actors, whatever the wire.

    transport = create_transport("object_store", mode="adapter")   # or "nccl" / "gloo" (merged only)
    info = transport.send(weights_of(model.lm, transport.mode), transport.targets(pool), version=7)

`send(weights, actors, version)` takes an iterator of `(name, tensor)` (Hugging Face causal-LM names,
`base.merged_weights` / `base.adapter_weights`) and returns what it did (seconds, bytes, tensors,
actors). A transport is an object: whatever state the wire needs (a collective group and the actors
it was made with; the last payload) lives in it, never in a module global.

`targets(pool)` says who receives: the object store hands the payload to the pool, which fans it out
to its actors and keeps it for actors that join later (resize, restart); a collective group is made of
the actors themselves (the sender is rank 0).
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from moon_ray.weight_sync.base import adapter_weights, merged_weights

MODES = ("merged", "adapter")
Weights = Iterable[tuple[str, torch.Tensor]]


def weights_of(lm: nn.Module, mode: str) -> Iterator[tuple[str, torch.Tensor]]:
    """The LM's weights as a transport sends them: merged LoRA (full matrices) or the adapters alone."""
    if mode == "merged":
        return merged_weights(lm)
    if mode == "adapter":
        return adapter_weights(lm)
    raise ValueError(f"weight sync mode must be one of {MODES}, got {mode!r}")


class WeightTransport(abc.ABC):
    """Trainer -> rollout actors: `send((name, tensor) iterator, actors, version) -> info`."""

    name: ClassVar[str] = "transport"

    def __init__(self, mode: str = "merged"):
        if mode not in MODES:
            raise ValueError(f"weight sync mode must be one of {MODES}, got {mode!r}")
        self.mode = mode

    @abc.abstractmethod
    def send(self, weights: Weights, actors: Sequence[Any], version: int) -> dict:
        """Deliver `weights` to every actor, which loads them and takes `version`; returns timings and sizes."""

    def targets(self, pool) -> list:
        """The handles `send` delivers to for a rollout pool (default: the pool, which fans out)."""
        return [pool]

    def sync_model(self, lm: nn.Module, pool, version: int) -> dict:
        """`send` the LM's weights (in this transport's mode) to the pool's receivers."""
        return self.send(weights_of(lm, self.mode), self.targets(pool), version)


_REGISTRY: dict[str, Callable[..., WeightTransport]] = {}
_BUILTIN = {"object_store": "moon_ray.weight_sync.object_store", "nccl": "moon_ray.weight_sync.collective",
            "gloo": "moon_ray.weight_sync.collective"}


def register_transport(*names: str):
    """Decorator: make a transport class available to `create_transport(name)`."""

    def wrap(cls):
        for n in names:
            _REGISTRY[n] = cls
        return cls

    return wrap


def create_transport(name: str, mode: str = "merged") -> WeightTransport:
    """A registered transport by name: object_store, nccl or gloo (the last two: collective groups)."""
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    if name not in _REGISTRY:
        raise ValueError(f"unknown weight transport {name!r}; known: {sorted(set(_REGISTRY) | set(_BUILTIN))}")
    factory = _REGISTRY[name]
    return factory(mode=mode, backend=name) if getattr(factory, "needs_backend", False) else factory(mode=mode)
