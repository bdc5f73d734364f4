"""NCCL weight broadcast (GPU): trainer rank 0 and the rollout actors form a collective group; each
tensor is broadcast from rank 0 into the actors' GPU buffers, then loaded by the engine.

Needs CUDA GPUs and `ray.util.collective` with NCCL; on CPU use `object_store`. Tested only with
the `gpu` pytest marker.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from moon_ray.weight_sync.base import merged_weights

GROUP = "moon_ray_weight_sync"


def init_group(actors: list, group: str = GROUP) -> None:
    """Create the group: rank 0 = this (trainer) process, ranks 1..N = the actors."""
    import ray
    from ray.util import collective

    world = len(actors) + 1
    ray.get([a.join_collective.remote(world, i + 1, group) for i, a in enumerate(actors)])
    collective.init_collective_group(world, 0, backend="nccl", group_name=group)


def broadcast(lm: nn.Module, actors: list, version: int, group: str = GROUP) -> dict:
    """Broadcast merged weights tensor by tensor; actors receive into matching buffers and load."""
    import ray
    from ray.util import collective

    t0 = time.perf_counter()
    items = [(n, t.cuda()) for n, t in merged_weights(lm)]
    specs = [(n, tuple(t.shape), str(t.dtype)) for n, t in items]
    pending = [a.receive_broadcast.remote(specs, version, group) for a in actors]
    for _, tensor in items:
        collective.broadcast(tensor, src_rank=0, group_name=group)
    ray.get(pending)
    torch.cuda.synchronize()
    return {"sync_s": time.perf_counter() - t0, "tensors": len(items), "actors": len(actors), "version": version}
