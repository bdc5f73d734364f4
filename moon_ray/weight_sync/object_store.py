"""Object-store broadcast (CPU): the trainer puts the payload once; every rollout actor pulls it."""

from __future__ import annotations

import time

from torch import nn

from moon_ray.weight_sync.base import adapter_weights, merged_weights, payload_bytes


def make_payload(lm: nn.Module, mode: str) -> list:
    if mode == "merged":
        return list(merged_weights(lm))
    if mode == "adapter":
        return list(adapter_weights(lm))
    raise ValueError(f"weight sync mode must be merged or adapter, got {mode!r}")


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
