"""The rollout pool: N rollout actors, sized independently of the trainers, resizable while a job runs.

    pool = RolloutPool.options(name=pool_name(...)).remote(engine="vllm", engine_kwargs={...},
                                                          num_workers=2, cpus_per_worker=0.5)
    groups = ray.get(pool.generate.remote(prompts, SamplingConfig(n=4)))
    create_transport("object_store").sync_model(lm, pool, version=3)          # one put, every actor pulls
    ray.get(pool.scale.remote(4))                                             # grow or shrink mid-run

Prompts are split evenly across the actors (contiguous chunks, sizes differing by at most one), one
chunk per actor in flight. A chunk whose actor dies is re-queued: the pool starts a replacement
(at most `max_restarts` over its life), gives it the current weights, and hands it the chunk; a chunk
whose actor was removed by a scale-down goes to a surviving actor. A call to `generate` so returns
every group, or raises when the restart budget is spent.

Weights arrive through a transport (moon_ray/weight_sync/transport.py): an object-store `Payload`
comes to the pool's `update_weights`, which hands it to every actor and keeps it; an actor that joins
later (scale up, replacement) loads it before it is given any prompt. Membership changes and weight
deliveries take one lock, so a joining actor never misses an update that races with its start. A
collective transport broadcasts to the actors (`worker_handles`) directly: an actor that joins between
two such syncs holds the base weights until the next one (its rollouts carry the old version).

Asynchronous rollouts (`rollout.async=true`, moon_ray/rollout/ahead.py): `submit(prompts, sampling,
min_version)` queues a batch and returns a ticket at once; `collect(ticket)` waits for its groups. A
dispatcher thread gives each idle actor the oldest queued chunk its weights may make (min_version, the
staleness bound), one chunk per actor at a time, and hands an actor the newest payload right before its
next chunk when it was busy during a sync: `update_weights` loads the idle actors now and returns without
waiting for busy ones, so a sync pauses an actor's generation only for its weight load, between chunks.
A chunk whose actor dies goes back to the front of the queue for the replacement. `stats()` gives the
actors' busy seconds (both paths) and the queue depth, from which the trainer logs the rollout idle fraction.

`scale(n)` refuses (and changes nothing) for n < 1 or more actors than the cluster's alive nodes can
hold at the pool's per-actor resources, and it is all or nothing: actors that cannot be placed within
`start_timeout_s` are given up and the pool keeps its size. Shrinking lets the removed actors finish
what they were given (`__ray_terminate__` is queued behind it). Every change is printed (so it shows in
the job's logs) and kept in `status()["events"]`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import ray
import torch

from moon_ray.infrastructure import resources
from moon_ray.infrastructure.timing import Stopwatch, timed
from moon_ray.rollout.ahead import Chunk, ChunkQueue, Ticket, split_evenly
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
        import os

        return self.engine.info() | {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}

    def pid(self) -> int:
        import os

        return os.getpid()


class PoolError(RuntimeError):
    """A pool operation that cannot be done; the pool is left as it was."""


@dataclass
class Member:
    handle: object
    pid: int
    node: str
    version: int  # the policy version it last loaded (object store) or generated with
    inflight: int = 0  # groups it is generating now
    running: bool = False  # holds a queued (asynchronous) chunk now
    up: Stopwatch = field(default_factory=Stopwatch)  # since it joined

    @property
    def key(self) -> str:
        return self.handle._actor_id.hex()


@ray.remote(num_cpus=0, max_concurrency=16)
class RolloutPool:
    def __init__(self, engine: str, engine_kwargs: dict, num_workers: int, cpus_per_worker: float = 1.0,
                 gpus_per_worker: float = 0.0, use_custom_resources: bool = False, max_restarts: int = 3,
                 start_timeout_s: float = 600.0):
        if num_workers < 1:
            raise PoolError(f"a rollout pool needs at least one actor, got num_workers={num_workers}")
        self.engine, self.engine_kwargs = engine, engine_kwargs
        self.options = dict(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                            resources=resources.request(resources.ROLLOUT, use_custom_resources))
        self.max_restarts, self.start_timeout_s = max_restarts, start_timeout_s
        self.transport = ObjectStoreTransport()
        self.latest: Payload | None = None  # the last object-store payload, for actors that join later
        self.version = 0
        self.restarts = self.requeued_groups = self.generated_groups = 0
        self.events: list[dict] = []
        self.nodes_ever: dict[str, None] = {}  # every node an actor of this pool ran on (ordered set)
        self._lock = threading.RLock()  # membership and weight delivery
        self._counts = threading.Lock()  # the counters generate keeps (status reads them)
        self._successors: dict[str, Future] = {}  # dead actor -> its replacement (made once)
        self.members: list[Member] = []
        self._queue, self._tickets, self._next_ticket = ChunkQueue(), {}, 0  # asynchronous rollouts
        self._running: dict = {}  # object ref -> (chunk, member, its weight-load ref or None, stopwatch)
        self._wake = threading.Condition(self._lock)  # a chunk or weights arrived, a ticket is done
        self._dispatcher: threading.Thread | None = None
        self._closed = False
        self._clock, self._busy_s = Stopwatch(), 0.0  # pool uptime; actor seconds of finished chunks
        self._join(self._start(num_workers))
        self._event("start", workers=num_workers)

    # ------------------------------------------------------------------------------ membership
    def _start(self, count: int) -> list:
        """`count` new actors, each up (engine loaded) within start_timeout_s; all given up otherwise."""
        actors = [ray.remote(RolloutWorker).options(**self.options).remote(self.engine, self.engine_kwargs)
                  for _ in range(count)]
        infos = [a.info.remote() for a in actors]
        ready, _ = ray.wait(infos, num_returns=len(infos), timeout=self.start_timeout_s)
        if len(ready) < len(infos):
            for a in actors:
                ray.kill(a)
            free = {k: round(v, 2) for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
            raise PoolError(f"{len(infos) - len(ready)} of {count} new rollout actors were not placed and started "
                            f"within rollout.start_timeout_s={self.start_timeout_s:g} s (each needs "
                            f"{self._need()}; free in the cluster now: {free}); the pool keeps "
                            f"{len(self.members)} actors")
        try:
            return list(zip(actors, ray.get(infos), strict=True))
        except ray.exceptions.RayError:
            for a in actors:
                ray.kill(a)
            raise

    def _join(self, started: list) -> list[Member]:
        """Give new actors the current weights, then make them members (one lock: no update is missed)."""
        with self._lock:
            if self.latest is not None:
                self.transport.deliver(self.latest, [a for a, _ in started], self.version)
            joined = [Member(a, info["pid"], info["node"], self.version if self.latest is not None else info["version"])
                      for a, info in started]
            self.members.extend(joined)
            self.nodes_ever.update(dict.fromkeys(m.node for m in joined))
        return joined

    def _need(self) -> dict[str, float]:
        return {"CPU": self.options["num_cpus"], "GPU": self.options["num_gpus"], **self.options["resources"]}

    def _event(self, what: str, **details) -> None:
        self.events.append({"t": round(time.time(), 3), "event": what, **details})  # time of day, for people
        print(f"[rollout pool] {what}: " + ", ".join(f"{k}={v}" for k, v in details.items()), flush=True)

    def _member(self, key: str) -> Member | None:
        return next((m for m in self.members if m.key == key), None)

    def _replacement(self, dead: Member) -> Member:
        """The member that takes a dead one's place: started once, even when several calls saw it die."""
        with self._lock:
            future = self._successors.get(dead.key)
            mine = future is None
            if mine:
                if self.restarts >= self.max_restarts:
                    raise PoolError(f"rollout actor pid {dead.pid} died and the restart budget "
                                    f"(rollout.max_restarts={self.max_restarts}) is spent")
                self.restarts += 1
                future = self._successors[dead.key] = Future()
        if not mine:
            return future.result()
        ray.kill(dead.handle)  # dead or unreachable: it must not come back beside its replacement
        try:
            (fresh,) = self._join(self._start(1))
        except BaseException as e:
            future.set_exception(e)
            raise
        with self._lock:
            self.members = [m for m in self.members if m.key != dead.key]
        self._event("restart", dead_pid=dead.pid, new_pid=fresh.pid, version=fresh.version,
                    restarts=f"{self.restarts}/{self.max_restarts}")
        future.set_result(fresh)
        return fresh

    # ------------------------------------------------------------------------------ generation
    def generate(self, prompts: Sequence[torch.Tensor], sampling: SamplingConfig) -> list[list[Rollout]]:
        with self._lock:
            members = list(self.members)
        parts = split_evenly(len(prompts), len(members))
        results: dict[int, list] = {}
        pending: dict = {}

        def submit(i: int, member: Member) -> None:
            with self._counts:
                member.inflight += len(parts[i])
            ref = member.handle.generate.remote([prompts[j] for j in parts[i]], sampling)
            pending[ref] = (i, member, Stopwatch())

        for i, member in enumerate(members[: len(parts)]):
            submit(i, member)
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            i, member, watch = pending.pop(ref)
            with self._counts:
                member.inflight -= len(parts[i])
                self._busy_s += watch.elapsed()
            try:
                results[i] = ray.get(ref)
            except ray.exceptions.RayActorError:
                with self._counts:
                    self.requeued_groups += len(parts[i])
                submit(i, self._successor_of(member))
                continue
            member.version = max([member.version, *(r.version for g in results[i] for r in g)])
        with self._counts:
            self.generated_groups += len(prompts)
        return [group for i in range(len(parts)) for group in results[i]]

    def _successor_of(self, gone: Member) -> Member:
        """Where a chunk goes when its actor is gone: a replacement for a dead member, or the least busy
        member when a scale-down removed it."""
        with self._lock:
            removed = self._member(gone.key) is None and gone.key not in self._successors
            survivors = list(self.members)
        if removed and survivors:
            return min(survivors, key=lambda m: m.inflight)
        return self._replacement(gone)

    # ------------------------------------------------------------------------------ asynchronous rollouts
    def submit(self, prompts: Sequence[torch.Tensor], sampling: SamplingConfig, min_version: int = 0,
               owner: str | None = None) -> int:
        """Queue a batch (split into one chunk per actor) to be generated with weights of at least
        `min_version`; its ticket for `collect`, at once. `owner` names the submitter for `abandon`."""
        with self._lock:
            if self._closed:
                raise PoolError("the rollout pool was shut down")
            ticket, self._next_ticket = self._next_ticket, self._next_ticket + 1
            parts = split_evenly(len(prompts), max(1, len(self.members)))
            self._tickets[ticket] = Ticket(parts=len(parts), owner=owner)
            for i, part in enumerate(parts):
                self._queue.push(Chunk(ticket, i, ([prompts[j] for j in part], sampling), min_version, len(part)))
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(target=self._dispatch, name="rollout-dispatch", daemon=True)
                self._dispatcher.start()
            self._wake.notify_all()
        return ticket

    def collect(self, ticket: int, timeout_s: float | None = None) -> list[list[Rollout]]:
        """The groups of a submitted batch, in prompt order, once every chunk is made (waits)."""
        with self._wake:
            entry = self._tickets.get(ticket)
            if entry is None:
                raise PoolError(f"no rollout ticket {ticket} (collected already, or never submitted)")
            if not self._wake.wait_for(lambda: entry.done, timeout_s):
                raise PoolError(f"rollout ticket {ticket} not done within {timeout_s} s")
            del self._tickets[ticket]
        return entry.assemble()

    def abandon(self, owner: str) -> dict:
        """Drop every open ticket of `owner` (a trainer rank that restarted: the batches its dead predecessor
        submitted ahead will never be collected): queued chunks leave the queue, running ones finish and
        are discarded. Counted in the pool's events."""
        with self._wake:
            tickets = {t for t, entry in self._tickets.items() if entry.owner == owner}
            dropped = self._queue.cancel(tickets)
            for t in tickets:
                del self._tickets[t]
            self._wake.notify_all()
        if tickets:
            self._event("abandon", owner=owner, tickets=len(tickets), queued_chunks=dropped)
        return {"tickets": len(tickets), "queued_chunks": dropped}

    def stats(self) -> dict:
        """Actor busy seconds (finished and running chunks, both paths), uptime, and the queue."""
        with self._lock:
            running = sum(w.elapsed() for *_, w in self._running.values())
            return {"busy_s": self._busy_s + running, "uptime_s": self._clock.elapsed(), "actors": len(self.members),
                    "queued_chunks": len(self._queue), "queued_groups": self._queue.groups(),
                    "blocked_chunks": self._queue.blocked(self.version), "running_chunks": len(self._running),
                    "open_tickets": len(self._tickets), "version": self.version}

    def _dispatch(self) -> None:
        """The dispatcher thread: hand out chunks, then wait for any running one; until shutdown."""
        while True:
            with self._wake:
                if self._closed:
                    return
                self._assign()
                refs = list(self._running)
                if not refs:
                    self._wake.wait(timeout=0.5)
                    continue
            done, _ = ray.wait(refs, num_returns=1, timeout=0.02)
            for ref in done:
                self._finish(ref)

    def _assign(self) -> None:
        """(lock held) Each idle member gets the oldest chunk its weights may make: the newest payload first
        when it holds older weights (loaded by the actor before the chunk, in call order)."""
        for m in self.members:
            if m.running:
                continue
            chunk = self._queue.take(self.version)
            if chunk is None:
                return
            load = None
            if self.latest is not None and m.version < self.version:
                load, m.version = m.handle.update_weights.remote(self.latest, self.version), self.version
            prompts, sampling = chunk.payload
            ref = m.handle.generate.remote(prompts, sampling)
            m.running, m.inflight = True, m.inflight + chunk.size
            self._running[ref] = (chunk, m, load, Stopwatch())

    def _finish(self, ref) -> None:
        """A running chunk ended: its result to its ticket, or back to the queue when its actor is gone."""
        with self._lock:
            chunk, member, load, watch = self._running.pop(ref)
            member.running, member.inflight = False, member.inflight - chunk.size
        with self._counts:
            self._busy_s += watch.elapsed()
        try:
            if load is not None:
                ray.get(load)
            result = ray.get(ref)
        except ray.exceptions.RayActorError:
            with self._counts:
                self.requeued_groups += chunk.size
            try:
                self._successor_of(member)  # a replacement joins with the current weights
            except Exception as e:  # the restart budget is spent, or the replacement did not start
                self._fail(chunk.ticket, e)
                return
            with self._wake:
                if chunk.ticket in self._tickets:  # not abandoned meanwhile
                    self._queue.requeue(chunk)
                self._wake.notify_all()
            return
        except Exception as e:
            self._fail(chunk.ticket, e)
            return
        with self._wake:
            member.version = max([member.version, *(r.version for g in result for r in g)])
            entry = self._tickets.get(chunk.ticket)
            if entry is not None:
                entry.results[chunk.index] = result
            self.generated_groups += chunk.size
            self._wake.notify_all()

    def _fail(self, ticket: int, error: BaseException) -> None:
        with self._wake:
            entry = self._tickets.get(ticket)
            if entry is not None:
                entry.error = error
            self._queue.cancel({ticket})
            self._wake.notify_all()

    # ------------------------------------------------------------------------------ weights
    def update_weights(self, payload: Payload, version: int) -> dict:
        """Every actor pulls the payload (put once by the sender) and loads it; kept for new actors. An actor
        found dead here is replaced (the replacement loads the payload as it joins)."""
        with timed("sync_s") as phase:
            with self._lock:
                self.latest, self.version = payload, version
                members = [m for m in self.members if not m.running]  # busy ones load before their next chunk
                refs = [m.handle.update_weights.remote(payload, version) for m in members]
                self._wake.notify_all()  # chunks that waited for this version
            dead = []
            for m, ref in zip(members, refs, strict=True):
                try:
                    m.version = ray.get(ref)
                except ray.exceptions.RayActorError:
                    dead.append(m)
            for m in dead:
                self._replacement(m)
        return {"sync_s": phase.seconds, "actors": len(self.members), "version": version}

    # ------------------------------------------------------------------------------ size
    def placement_limit(self) -> int | None:
        return resources.placement_limit(self._need(), ray.nodes())

    def scale(self, num_workers: int) -> dict:
        """Grow or shrink to `num_workers`; {"workers", "before", "limit"}; PoolError (nothing changed) for a
        size below 1, above what the cluster can hold, or new actors that cannot be started in time."""
        limit = self.placement_limit()
        if num_workers < 1:
            raise PoolError(f"a rollout pool needs at least 1 actor; asked for {num_workers} (the pool keeps "
                            f"{len(self.members)})")
        if limit is not None and num_workers > limit:
            raise PoolError(f"the cluster can place at most {limit} rollout actors ({self._need()} each, counted on "
                            f"the {len([n for n in ray.nodes() if n.get('Alive')])} alive nodes' total resources); "
                            f"asked for {num_workers}, the pool keeps {len(self.members)}")
        before = len(self.members)
        if num_workers > before:
            self._join(self._start(num_workers - before))
        elif num_workers < before:
            with self._lock:
                self.members, removed = self.members[:num_workers], self.members[num_workers:]
            for m in removed:  # runs after whatever it was given: in-flight chunks finish
                m.handle.__ray_terminate__.remote()
        if num_workers != before:
            self._event("scale", before=before, workers=len(self.members), version=self.version)
        return {"workers": len(self.members), "before": before, "limit": limit}

    def resize(self, num_workers: int) -> int:
        return self.scale(num_workers)["workers"]

    def status(self) -> dict:
        """What the pool holds, from its own records (never waits on a busy actor)."""
        with self._lock:
            members = [{"pid": m.pid, "node": m.node, "version": m.version, "inflight_groups": m.inflight,
                        "up_s": round(m.up.elapsed(), 1)} for m in self.members]
        return {"workers": len(members), "version": self.version, "restarts": self.restarts,
                "max_restarts": self.max_restarts, "requeued_groups": self.requeued_groups,
                "generated_groups": self.generated_groups, "engine": self.engine, "resources": self._need(),
                "queued_chunks": len(self._queue), "open_tickets": len(self._tickets),
                "placement_limit": self.placement_limit(), "actors": members, "events": self.events[-20:],
                "nodes_ever": list(self.nodes_ever)}

    def worker_handles(self) -> list:
        return [m.handle for m in self.members]

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            for ticket in self._tickets.values():
                if not ticket.done:
                    ticket.error = PoolError("the rollout pool was shut down")
            self._wake.notify_all()
            for m in self.members:
                ray.kill(m.handle)
            self.members = []
