"""The model behind the routes: dynamic batching over a model process; reasoning handed to its own deployment.

    engine = Engine(ModelWorker(spec), cfg.serve, aliases={"frozen"}, reasoner=handle_or_None)
    vecs, tokens = await engine.embed(items)                  # queries: (N, dim), batched across requests
    vecs, traces, tokens, trace_tokens = await engine.embed_documents(items)   # products, as the index does

`embed` submits every item on its own to `_enqueue`, a `@serve.batch` method: it gathers the items of
concurrent requests for up to `serve.batch_wait_timeout_s` and puts them on a `ModelQueue`. One task
drains that queue: each model call takes up to `serve.max_batch_size` waiting items, oldest first, so
items that arrived while the model was busy go together into the next call (serve.batch alone would
have lined them up as many small batches). `GET /healthz` reports the calls made and their mean size.
The encode runs in the model process (worker.py); the event loop only waits on its socket (from a
helper thread), so it keeps taking requests meanwhile. If a model call fails, its items are retried
one by one, so that a bad item fails only its own request; if the model process dies, the requests in
flight get a 500 and the next request starts a new one.

The reasoning policy (DESIGN.md): queries are embedded as training embeds them, without a trace, so
`reasoning: true` on a query is a 400. Documents (`input_type: document`, image + title) are embedded
as the index embeds products: with the model's greedy trace when it reasons (an export trained with
rollout.enabled), else from image + title alone (this model process, its own queue). Generation never
touches this model process: it costs seconds per batch, and a request of many inputs used to hold the
model for minutes while every embedding waited. Documents of a model that reasons go to the
MoonReasoner deployment (reasoner.py) through a handle, at most `serve.reasoning_max_inputs` inputs
each; it has its own replicas, model process, concurrency cap and queue. When its queue is full the
request gets 503 with Retry-After at once; after `serve.reasoning_timeout_s`, 504. `reasoning` on a
document may only confirm what the model does (true: it reasons; false: it does not); otherwise 400,
before any input is decoded.

Usage counts: the text inputs' tokens by the model's tokenizer (MiniLM's for `frozen`, the LM's for
an exported model; no special tokens); an encoder without a tokenizer (`random`) counts whitespace
words. Images count 0 tokens. With reasoning, the traces' tokens are added to total_tokens.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from ray import serve

from moon_ray.config import ServeConfig
from moon_ray.infrastructure.timing import Stopwatch
from moon_ray.serve.errors import ApiError
from moon_ray.serve.validation import Item
from moon_ray.serve.worker import ModelWorker, WorkerDied


class ModelQueue:
    """Items waiting for one model operation; one task drains them, up to `max_batch` per call.

    `run(items)` returns one result (or ApiError) per item. `on_batch(size, seconds)` sees every call.
    With `wait_s`, an idle queue waits that long for more items before its first call (generation is
    slow, so a short wait buys a fuller batch)."""

    def __init__(self, run: Callable[[list[Item]], Awaitable[list]], max_batch: int, wait_s: float = 0.0,
                 on_batch: Callable[[int, float], None] | None = None):
        self.run, self.max_batch, self.wait_s, self.on_batch = run, max_batch, wait_s, on_batch
        self.queue: deque[tuple[Item, asyncio.Future]] = deque()
        self.runner: asyncio.Task | None = None  # the task draining the queue, while there is one
        self.batches = 0  # model calls made, and the items they held
        self.items = 0

    @property
    def depth(self) -> int:
        return len(self.queue)

    def stats(self) -> dict:
        mean = self.items / self.batches if self.batches else 0.0
        return {"batches": self.batches, "items": self.items, "mean_batch_size": round(mean, 2)}

    def submit(self, items: list[Item]) -> list[asyncio.Future]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self.queue.extend(zip(items, futures, strict=True))
        if self.runner is None or self.runner.done():
            self.runner = asyncio.create_task(self._drain())
        return futures

    async def _drain(self) -> None:
        """Model calls of up to max_batch queued items (oldest first) until the queue is empty."""
        if self.wait_s:
            await asyncio.sleep(self.wait_s)
        while self.queue:
            taken = []
            while self.queue and len(taken) < self.max_batch:
                item, future = self.queue.popleft()
                if not future.done():  # not cancelled (its request went away)
                    taken.append((item, future))
            if not taken:
                continue
            self.batches += 1
            self.items += len(taken)
            clock = Stopwatch()
            try:
                results = await self.run([item for item, _ in taken])
            except Exception as e:  # never leave a request waiting
                results = [ApiError(500, f"the model failed: {e}", code="model_error")] * len(taken)
            except BaseException:  # cancelled: the replica is going away
                for _, future in taken:
                    future.cancel()
                raise
            if self.on_batch is not None:
                self.on_batch(len(taken), clock.elapsed())
            for (_, future), result in zip(taken, results, strict=True):
                if not future.done():
                    future.set_result(result)


async def call_worker(worker: ModelWorker, executor: ThreadPoolExecutor, op: str, items: list[Item]):
    """`op` on the model process for these items (from a helper thread); its failures as ApiErrors."""
    loop = asyncio.get_running_loop()
    images, texts = [it.image for it in items], [it.text for it in items]
    try:
        return await loop.run_in_executor(executor, worker.call, op, images, texts)
    except ValueError as e:
        raise ApiError(400, f"the input could not be embedded: {e}", code="invalid_input") from None
    except WorkerDied as e:
        raise ApiError(500, str(e), code="model_process_died") from None
    except RuntimeError as e:
        raise ApiError(500, f"the model failed: {e}", code="model_error") from None


async def per_item(call: Callable[[list[Item]], Awaitable[list]], items: list[Item]) -> list:
    """`call(items)`; if it fails, the items one by one, so that a bad item fails only its own request."""
    try:
        return await call(items)
    except ApiError as e:
        if len(items) == 1 or e.code == "model_process_died":
            return [e] * len(items)
    out = []
    for item in items:
        try:
            out.extend(await call([item]))
        except ApiError as e:
            out.append(e)
    return out


class Engine:
    """A model process served to many concurrent requests (and a handle to the reasoning deployment)."""

    def __init__(self, worker: ModelWorker, scfg: ServeConfig, aliases: set[str], reasoner=None, metrics=None):
        self.worker = worker
        info = worker.info
        self.model_id = info["name"]
        self.aliases = {info["name"], scfg.model, *aliases}
        self.dim = int(info["dim"])
        self.dimensions = tuple(info["dimensions"])
        self.reasons = bool(info.get("reasons"))  # embeds products with a trace (trained with reasoning)
        self.reasoner = reasoner if self.reasons else None
        self.can_reason = self.reasoner is not None
        self.has_lm = bool(info["can_reason"])
        self.scfg = scfg
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moon-model")
        self._enqueue.set_max_batch_size(scfg.max_batch_size)
        self._enqueue.set_batch_wait_timeout_s(scfg.batch_wait_timeout_s)
        self.queue = ModelQueue(self._encode, scfg.max_batch_size, on_batch=self._on_batch("embed"))
        self.documents = ModelQueue(self._documents, scfg.max_batch_size, on_batch=self._on_batch("document"))
        self.reasoning_inflight = 0

    def _on_batch(self, op: str):
        return (lambda n, s: self.metrics.batch(op, n, s)) if self.metrics is not None else None

    def batching(self) -> dict:
        """How full the dynamic batches have been since the replica started (for /healthz and tuning)."""
        return self.queue.stats()

    def check_reasoning(self, input_type: str, reasoning: bool | None) -> None:
        """ApiError(400) when `reasoning` asks for what the reasoning policy does not do for `input_type`,
        or when this deployment cannot embed documents the way the model's index does."""
        if input_type == "query":
            if reasoning:
                raise ApiError(400, f"model {self.model_id!r} embeds queries as training does, without a reasoning "
                                    "trace, so reasoning=true does not apply to a query; send the product's image and "
                                    "title with input_type='document' to embed it with its trace, or drop "
                                    "'reasoning'", param="reasoning", code="reasoning_unsupported")
            return
        if reasoning is False and self.reasons:
            raise ApiError(400, f"model {self.model_id!r} embeds every product with its reasoning trace, as its index "
                                "does; a document without one would not match the index: drop 'reasoning'",
                           param="reasoning", code="reasoning_required")
        if reasoning and not self.reasons:
            why = "was trained without reasoning (rollout.enabled=false)" if self.has_lm else \
                "has no language model"
            raise ApiError(400, f"model {self.model_id!r} {why}, so it embeds products from image and title alone; "
                                "drop 'reasoning'", param="reasoning", code="reasoning_unsupported")
        if self.reasons and not self.can_reason:
            raise ApiError(400, f"model {self.model_id!r} embeds products with a reasoning trace and reasoning is off "
                                "on this deployment (serve.reasoning=false); redeploy with it on to embed documents",
                           param="input_type", code="reasoning_unsupported")

    def accepts(self, model: str | None) -> bool:
        return model is None or model in self.aliases

    # ------------------------------------------------------------------------------- embeddings
    async def embed(self, items: list[Item]) -> tuple[np.ndarray, list[int]]:
        """(N, dim) float32 unit rows and each item's text tokens; each item joins the dynamic batch."""
        futures = await asyncio.gather(*(self._enqueue(item) for item in items))
        results = await asyncio.gather(*futures)
        for r in results:
            if isinstance(r, Exception):
                raise r
        return np.stack([v for v, _ in results]).astype(np.float32, copy=False), [t for _, t in results]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _enqueue(self, items: list[Item]) -> list[asyncio.Future]:
        """Serve's batcher gathers items for up to the wait timeout; they join the model's queue at once.

        serve.batch forms its next batch while the previous one runs, so behind a busy model it would
        line up many small batches (a mean of 2.4 items at 32 concurrent requests, measured). Handing
        each batch to the queue instead lets the next model call take everything that waits.
        """
        return self.queue.submit(items)

    async def _encode(self, items: list[Item]) -> list[tuple[np.ndarray, int] | ApiError]:
        async def encode(chunk: list[Item]):
            vecs, tokens = await call_worker(self.worker, self.executor, "encode", chunk)
            return list(zip(vecs, tokens, strict=True))

        return await per_item(encode, items)

    # -------------------------------------------------------------------------------- documents
    async def embed_documents(self, items: list[Item]) -> tuple[np.ndarray, list[str] | None, list[int],
                                                                list[int] | None]:
        """Products (image + title) embedded as the index embeds them: (vectors, traces or None, title
        tokens, trace tokens or None). With a trace from the reasoning deployment when the model reasons."""
        self.check_reasoning("document", None)
        if not self.reasons:
            results = await asyncio.gather(*self.documents.submit(items))
            for r in results:
                if isinstance(r, Exception):
                    raise r
            return np.stack([v for v, _ in results]).astype(np.float32, copy=False), None, [t for _, t in results], None
        cap = self.scfg.reasoning_max_inputs
        if len(items) > cap:
            raise ApiError(400, f"too many documents for a model that reasons: {len(items)} (at most {cap} per request, "
                                "serve.reasoning_max_inputs)", param="input", code="too_many_inputs")
        self.reasoning_inflight += 1
        try:
            out = await self._ask_reasoner(items)
        finally:
            self.reasoning_inflight -= 1
        if "error" in out:
            status, message, param, code = out["error"]
            raise ApiError(status, message, param=param, code=code)
        if self.metrics is not None:
            self.metrics.batch("reason", out["batch"], out["seconds"])
        return out["vectors"], out["traces"], out["tokens"], out["trace_tokens"]

    async def _documents(self, items: list[Item]) -> list[tuple[np.ndarray, int] | ApiError]:
        async def embed(chunk: list[Item]):
            vecs, _, tokens, _ = await call_worker(self.worker, self.executor, "documents", chunk)
            return list(zip(vecs, tokens, strict=True))

        return await per_item(embed, items)

    async def _ask_reasoner(self, items: list[Item]) -> dict:
        from ray.serve.exceptions import BackPressureError

        response = self.reasoner.remote(items)

        async def result():
            return await response

        try:
            return await asyncio.wait_for(result(), timeout=self.scfg.reasoning_timeout_s)
        except BackPressureError:
            raise ApiError(503, "reasoning is at capacity (serve.reasoning_max_ongoing and reasoning_max_queued "
                                "requests are taken); retry later", code="reasoning_busy",
                           headers={"Retry-After": "1"}) from None
        except TimeoutError:
            response.cancel()
            raise ApiError(504, f"reasoning took longer than {self.scfg.reasoning_timeout_s:g} s "
                                "(serve.reasoning_timeout_s)", code="reasoning_timeout") from None
