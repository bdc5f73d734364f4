"""Collective transport: weights broadcast over a Ray collective group, NCCL between GPUs or gloo
between CPU processes.

    transport = create_transport("nccl")                  # merged weights only
    transport.send(weights, actors, version)              # makes the group on first use, then reuses it

The sender is rank 0 (it must itself be a Ray actor, such as a Ray Train worker); the ranks 1..N are
rollout actors (`RolloutWorker`: `join_collective`, `receive_broadcast`). Each tensor is broadcast from
rank 0 into a buffer of the announced shape on every actor, in the announced order; the actor then
loads the received weights into its engine and takes the new version. With NCCL the tensors stay on
the GPUs; the object store (object_store.py) is the default on CPU.

A group is fixed in size: when the actors change (pool resized, an actor restarted) the transport makes
a new group (a new name) with the current actors. An actor restarted between two syncs holds the base
weights until the next one: its rollouts carry an old version and fall under rollout.max_staleness.
gloo here needs rank 0 to have no torch.distributed group of its own (Ray's gloo group is built on
torch.distributed's default group), so over gloo the sender cannot be a DDP trainer; NCCL groups do not
have that limit.

Tested over gloo on CPU (tests/train/test_joint.py: the actors end up with the same weights as an
object-store sync); the NCCL test is marked `gpu` and runs only where CUDA is available.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from moon_ray.infrastructure.timing import timed
from moon_ray.weight_sync.transport import Weights, WeightTransport, register_transport

GROUP = "moon_ray_weight_sync"
BACKENDS = ("nccl", "gloo")


def device_of(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"collective weight sync: backend must be one of {BACKENDS}, got {backend!r}")
    return "cuda" if backend == "nccl" else "cpu"


def init_group(actors: Sequence[Any], backend: str, group: str) -> None:
    """Create the group: rank 0 = this (sending) process, ranks 1..N = the actors.

    Every rank joins at once (gloo's rendezvous waits for all of them), so the actors' joins are sent
    before this process joins, and awaited after.
    """
    import ray
    from ray.util import collective

    device_of(backend)
    world = len(actors) + 1
    joins = [a.join_collective.remote(world, i + 1, backend, group) for i, a in enumerate(actors)]
    collective.init_collective_group(world, 0, backend=backend, group_name=group)
    ray.get(joins)


def broadcast(weights: Weights, actors: Sequence[Any], version: int, backend: str, group: str) -> dict:
    """Broadcast (name, tensor) pairs tensor by tensor; every actor receives, loads, takes `version`."""
    import ray
    from ray.util import collective

    device = device_of(backend)
    items = [(n, t.to(device).contiguous()) for n, t in weights]
    specs = [(n, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in items]
    pending = [a.receive_broadcast.remote(specs, version, group) for a in actors]
    for _, tensor in items:
        collective.broadcast(tensor, src_rank=0, group_name=group)
    versions = ray.get(pending)
    if device == "cuda":
        torch.cuda.synchronize()
    return {"tensors": len(items), "actors": len(actors), "version": version, "backend": backend,
            "bytes": sum(t.numel() * t.element_size() for _, t in items), "actor_versions": versions}


def receive(specs: list[tuple[str, tuple, str]], backend: str, group: str) -> list[tuple[str, torch.Tensor]]:
    """The actor side of `broadcast`: a buffer per announced tensor, filled from rank 0, in order."""
    from ray.util import collective

    device = device_of(backend)
    out = []
    for name, shape, dtype in specs:
        buffer = torch.empty(shape, dtype=getattr(torch, dtype), device=device)
        collective.broadcast(buffer, src_rank=0, group_name=group)
        out.append((name, buffer))
    return out


@register_transport(*BACKENDS)
class CollectiveTransport(WeightTransport):
    """Merged weights over a collective group held by this object (made again when the actors change)."""

    needs_backend = True

    def __init__(self, mode: str = "merged", backend: str = "nccl", prefix: str = GROUP):
        super().__init__(mode)
        if mode != "merged":
            raise ValueError("a collective transport broadcasts merged weights (rollout.sync_mode=merged)")
        device_of(backend)
        self.name, self.backend, self.prefix = backend, backend, prefix
        self.group: str | None = None
        self.members: tuple[str, ...] = ()
        self.groups_made = 0

    def targets(self, pool) -> list:
        import ray

        return ray.get(pool.worker_handles.remote())

    def send(self, weights: Weights, actors: Sequence[Any], version: int) -> dict:
        with timed("sync_s") as phase:
            self._ensure_group(actors)
            info = broadcast(weights, actors, version, self.backend, self.group)
        return {"sync_s": phase.seconds, **info, "group": self.group, "transport": self.name}

    def _ensure_group(self, actors: Sequence[Any]) -> None:
        members = tuple(a._actor_id.hex() for a in actors)
        if members != self.members:
            name = f"{self.prefix}-{self.groups_made}"
            init_group(actors, self.backend, name)
            self.group, self.members, self.groups_made = name, members, self.groups_made + 1
