"""Weight broadcast over a Ray collective group: NCCL between GPUs, gloo between CPU processes.

    init_group(actors, backend="nccl")                 # once: this process is rank 0, the actors 1..N
    broadcast(lm, actors, version, backend="nccl")     # every sync: merged weights, tensor by tensor

Rank 0 is the trainer (it must itself be a Ray actor, such as a Ray Train worker); the ranks 1..N are
rollout actors (`RolloutWorker`: `join_collective`, `receive_broadcast`). Each tensor is broadcast from
rank 0 into a buffer of the announced shape on every actor, in the announced order; the actor then
loads the received weights into its engine and takes the new version. With NCCL the tensors stay on
the GPUs; the object store (object_store.py) is the default on CPU.

The group is fixed in size: after a rollout pool is resized or an actor restarted, make a new group
(another `group` name) with the current actors. gloo here needs rank 0 to have no torch.distributed
group of its own (Ray's gloo group is built on torch.distributed's default group), so over gloo the
sender cannot be a DDP trainer; NCCL groups do not have that limit.

Tested over gloo on CPU (tests/train/test_joint.py: the actors end up with the same weights as an
object-store sync); the NCCL test is marked `gpu` and runs only where CUDA is available.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from moon_ray.weight_sync.base import merged_weights

GROUP = "moon_ray_weight_sync"
BACKENDS = ("nccl", "gloo")


def device_of(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"collective weight sync: backend must be one of {BACKENDS}, got {backend!r}")
    return "cuda" if backend == "nccl" else "cpu"


def init_group(actors: list, backend: str = "nccl", group: str = GROUP) -> None:
    """Create the group: rank 0 = this (trainer) process, ranks 1..N = the actors.

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


def broadcast(lm: nn.Module, actors: list, version: int, backend: str = "nccl", group: str = GROUP) -> dict:
    """Broadcast the LM's merged weights tensor by tensor; every actor receives, loads, takes `version`."""
    import ray
    from ray.util import collective

    t0 = time.perf_counter()
    device = device_of(backend)
    items = [(n, t.to(device).contiguous()) for n, t in merged_weights(lm)]
    specs = [(n, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in items]
    pending = [a.receive_broadcast.remote(specs, version, group) for a in actors]
    for _, tensor in items:
        collective.broadcast(tensor, src_rank=0, group_name=group)
    versions = ray.get(pending)
    if device == "cuda":
        torch.cuda.synchronize()
    return {"sync_s": time.perf_counter() - t0, "tensors": len(items), "actors": len(actors), "version": version,
            "backend": backend, "bytes": sum(t.numel() * t.element_size() for _, t in items),
            "actor_versions": versions}


def receive(specs: list[tuple[str, tuple, str]], backend: str, group: str = GROUP) -> list[tuple[str, torch.Tensor]]:
    """The actor side of `broadcast`: a buffer per announced tensor, filled from rank 0, in order."""
    from ray.util import collective

    device = device_of(backend)
    out = []
    for name, shape, dtype in specs:
        buffer = torch.empty(shape, dtype=getattr(torch, dtype), device=device)
        collective.broadcast(buffer, src_rank=0, group_name=group)
        out.append((name, buffer))
    return out
