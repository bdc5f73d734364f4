"""The reasoning deployment, MoonReasoner: documents of a model that reasons, apart from plain embeddings.

    reasoner = MoonReasoner.options(**reasoner_options(cfg)).bind(to_dict(cfg))   # app.py binds it
    out = await handle.remote(items)    # {"vectors", "traces", "tokens", "trace_tokens", "batch", "seconds"}

A model trained with reasoning embeds a product (`input_type: document`) with its greedy trace, as its
index does (worker.py `documents`, index_artifact.embed_products), so such a request generates a trace
per input (seconds per batch on a CPU) before embedding it. On
the ingress replica it would hold the model process that every plain embedding request needs, so it
runs here instead, on its own replicas (`serve.reasoning_replicas` of `serve.reasoning_cpus_per_replica`
CPUs), each with its own model process (worker.py), started `serve.reasoning_nice` steps nicer so that
on shared cores the embedding path wins the CPU. The replica's constructor does not wait for that
model to load (a first reasoning request does), so `serve.run` and a new ingress replica's start are
not held up by it.

Concurrency: a replica takes at most `serve.reasoning_max_ongoing` requests at once; up to
`serve.reasoning_max_queued` more wait at each caller (Serve's max_queued_requests); beyond that the
caller gets BackPressureError at once, which the ingress answers 503 with Retry-After. Inputs of the
requests in a replica share one queue (engine.ModelQueue): an idle replica waits
`serve.reasoning_batch_wait_s` for more, then each model call generates for up to
`serve.reasoning_batch_size` of them in one batch (HF `generate`, greedy, over the left-padded prompts
of the embedder's own LM, `models/reasoning.py`), so concurrent clients share the generation steps.
A bad input fails only its own request (the batch is retried one by one).

Results travel as plain data, errors as {"error": (status, message, param, code)}: an exception raised
in a replica reaches the caller wrapped by Ray, and an ApiError's status would not survive that.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from ray import serve

from moon_ray.config import Config, build
from moon_ray.infrastructure.timing import Stopwatch
from moon_ray.serve.engine import ModelQueue, call_worker, per_item
from moon_ray.serve.errors import ApiError
from moon_ray.serve.validation import Item
from moon_ray.serve.worker import ModelReplica, model_spec, replica_actor_options


@serve.deployment(name="MoonReasoner")
class MoonReasoner(ModelReplica):
    """A model process generating traces for batches of documents gathered across requests."""

    def __init__(self, config: dict):
        from moon_ray.serve.worker import ModelWorker

        cfg = build(Config, config)
        # The model loads in its (nicer) process while the replica already counts as started: the ingress,
        # deployed beside it, starts answering embeddings without waiting for it; a first reasoning
        # request waits for the load (worker.call).
        self.worker = ModelWorker(model_spec(cfg, reasoning=True), wait=False)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moon-reason")
        s = cfg.serve
        self.queue = ModelQueue(self._reason, s.reasoning_batch_size, wait_s=s.reasoning_batch_wait_s)

    async def __call__(self, items: list[Item]) -> dict[str, Any]:
        clock = Stopwatch()
        results = await asyncio.gather(*self.queue.submit(list(items)))
        for r in results:
            if isinstance(r, ApiError):
                return {"error": (r.status, r.message, r.param, r.code)}
        return {"vectors": np.stack([r[0] for r in results]).astype(np.float32, copy=False),
                "traces": [r[1] for r in results], "tokens": [r[2] for r in results],
                "trace_tokens": [r[3] for r in results], "batch": max(r[4] for r in results),
                "seconds": clock.elapsed()}

    async def _reason(self, items: list[Item]) -> list:
        async def reason(chunk: list[Item]):
            vecs, traces, tokens, trace_tokens = await call_worker(self.worker, self.executor, "documents", chunk)
            return [(*row, len(chunk)) for row in zip(vecs, traces, tokens, trace_tokens, strict=True)]

        return await per_item(reason, items)

    def stats(self) -> dict:
        return {"queue": self.queue.depth, **self.queue.stats(), "model_pid": self.worker.pid}


def reasoner_options(cfg: Config) -> dict[str, Any]:
    s = cfg.serve
    actor = replica_actor_options(cfg, s.reasoning_cpus_per_replica, s.reasoning_gpus_per_replica)
    return {"ray_actor_options": actor, "num_replicas": s.reasoning_replicas,
            "max_ongoing_requests": s.reasoning_max_ongoing, "max_queued_requests": s.reasoning_max_queued,
            "logging_config": {"enable_access_log": s.access_log}}
