"""The rollout pool: N rollout actors, sized independently of the trainers.

    pool = RolloutPool.options(name="rollout-pool").remote(engine="vllm", engine_kwargs={...},
                                                           num_workers=2, cpus_per_worker=0.5)
    groups = ray.get(pool.generate.remote(prompts, SamplingConfig(n=4)))
    create_transport("object_store").sync_model(lm, pool, version=3)          # one put, every actor pulls
    ray.get(pool.resize.remote(4))                                           # grow or shrink mid-run

Prompts are split evenly across the actors (contiguous chunks, sizes differing by at most one). An
actor that dies is replaced, given the latest weights, and its chunk is retried once.

Weights arrive through a transport (moon_ray/weight_sync/transport.py): an object-store `Payload`
comes to the pool's `update_weights`, which hands it to every actor and keeps it for actors that join
later; a collective transport broadcasts to the actors (`worker_handles`) directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import ray
import torch

from moon_ray.infrastructure import resources
from moon_ray.infrastructure.timing import timed
from moon_ray.rollout.base import Rollout, SamplingConfig, create_engine
from moon_ray.weight_sync.base import merge_adapter
from moon_ray.weight_sync.object_store import ObjectStoreTransport, Payload


class RolloutWorker:
    """One engine in one actor (created with `ray.remote(RolloutWorker).options(...)`)."""

    def __init__(self, engine: str, engine_kwargs: dict):
        self.engine = create_engine(engine, **engine_kwargs)
        self.model_dir = engine_kwargs.get("model_dir")
        self._base: dict[str, torch.Tensor] | None = None
        self._collective: str | None = None  # the backend of the collective group joined, if any

    def generate(self, prompts: Sequence[torch.Tensor], sampling: SamplingConfig) -> list[list[Rollout]]:
        return self.engine.generate(prompts, sampling)

    def update_weights(self, payload: Payload, version: int) -> int:
        """Load an object-store payload (merged weights, or adapters merged here unless the engine
        holds live adapters) and take `version`."""
        mode, payload = payload.mode, payload.items()
        if mode == "adapter" and self.engine.supports_adapter:  # unmerged adapters: copy A/B, no merge
            self.engine.update_adapter(iter(payload), version)
            return version
        items = payload
        if mode == "adapter":
            items = list(merge_adapter(self._base_weights([n for n, _ in payload]), dict(payload)))
        self.engine.update_weights(iter(items), version)
        return version

    def _base_weights(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The untouched base weights that adapters are merged into (read once from model_dir)."""
        if self._base is None:
            from pathlib import Path

            from safetensors import safe_open

            wanted = {n.rsplit("::", 1)[0] for n in names}
            self._base = {}
            for file in sorted(Path(self.model_dir).glob("*.safetensors")):
                with safe_open(str(file), framework="pt") as f:
                    for key in f.keys():
                        if key in wanted:
                            self._base[key] = f.get_tensor(key).float()
        return self._base

    def join_collective(self, world_size: int, rank: int, backend: str, group: str) -> int:
        """Join the trainer's collective group (weight_sync/collective.py) as `rank`."""
        from ray.util import collective

        collective.init_collective_group(world_size, rank, backend=backend, group_name=group)
        self._collective = backend
        return rank

    def receive_broadcast(self, specs: list, version: int, group: str) -> int:
        """Receive the tensors rank 0 broadcasts (names, shapes, dtypes in `specs`) and load them."""
        from moon_ray.weight_sync.collective import receive

        if self._collective is None:
            raise RuntimeError("receive_broadcast before join_collective: this actor is in no collective group")
        self.engine.update_weights(iter(receive(specs, self._collective, group)), version)
        return version

    def info(self) -> dict:
        return self.engine.info()

    def pid(self) -> int:
        import os

        return os.getpid()


def split_evenly(n_items: int, n_parts: int) -> list[range]:
    """Contiguous ranges covering n_items, sizes differing by at most one (empty ranges dropped)."""
    base, extra = divmod(n_items, n_parts)
    out, start = [], 0
    for i in range(n_parts):
        size = base + (1 if i < extra else 0)
        if size:
            out.append(range(start, start + size))
        start += size
    return out


@ray.remote(num_cpus=0, max_concurrency=16)
class RolloutPool:
    def __init__(self, engine: str, engine_kwargs: dict, num_workers: int, cpus_per_worker: float = 1.0,
                 gpus_per_worker: float = 0.0, use_custom_resources: bool = False):
        self.engine, self.engine_kwargs = engine, engine_kwargs
        self.options = dict(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                            resources=resources.request(resources.ROLLOUT, use_custom_resources))
        self.transport = ObjectStoreTransport()
        self.latest: Payload | None = None  # the last object-store payload, for actors that join later
        self.version = 0
        self.restarts = 0
        self.actors = [self._spawn() for _ in range(num_workers)]
        ray.get([a.info.remote() for a in self.actors])  # wait until every engine is up

    def _spawn(self):
        actor = ray.remote(RolloutWorker).options(**self.options).remote(self.engine, self.engine_kwargs)
        if self.latest is not None:
            self.transport.deliver(self.latest, [actor], self.version)
        return actor

    def generate(self, prompts: Sequence[torch.Tensor], sampling: SamplingConfig) -> list[list[Rollout]]:
        actors = list(self.actors)
        parts = split_evenly(len(prompts), len(actors))
        futures = [actors[i].generate.remote([prompts[j] for j in r], sampling) for i, r in enumerate(parts)]
        out: list[list[Rollout]] = []
        for i, (r, fut) in enumerate(zip(parts, futures, strict=True)):
            try:
                out.extend(ray.get(fut))
            except ray.exceptions.RayActorError:
                replacement = self._replace(actors[i])
                out.extend(ray.get(replacement.generate.remote([prompts[j] for j in r], sampling)))
        return out

    def _replace(self, dead):
        self.restarts += 1
        fresh = self._spawn()
        self.actors = [fresh if a == dead else a for a in self.actors]
        return fresh

    def update_weights(self, payload: Payload, version: int) -> dict:
        """Every actor pulls the payload (put once by the sender) and loads it; kept for new actors."""
        with timed("sync_s") as phase:
            self.latest, self.version = payload, version
            self.transport.deliver(payload, self.actors, version)
        return {"sync_s": phase.seconds, "actors": len(self.actors), "version": version}

    def resize(self, num_workers: int) -> int:
        if num_workers < 1:
            raise ValueError("a rollout pool needs at least one worker")
        while len(self.actors) < num_workers:
            self.actors.append(self._spawn())
        while len(self.actors) > num_workers:
            ray.kill(self.actors.pop())
        return len(self.actors)

    def status(self) -> dict:
        infos = ray.get([a.info.remote() for a in self.actors])
        return {"workers": len(self.actors), "version": self.version, "restarts": self.restarts, "engines": infos}

    def worker_handles(self) -> list:
        return list(self.actors)

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []
