"""The model behind the routes: dynamic batching over a model process, reasoning traces, token counts.

    engine = Engine(ModelWorker(spec), cfg.serve, model_key="frozen")
    vecs, tokens = await engine.embed(items)                  # (N, dim), items batched across requests
    vecs, traces, tokens, trace_tokens = await engine.embed_with_reasoning(items)   # exported MOON models

`embed` submits every item on its own to `_embed_batch`, a `@serve.batch` method: items of concurrent
requests are gathered into one encode call of at most `serve.max_batch_size` items, waiting at most
`serve.batch_wait_timeout_s` to fill it. The encode runs in the model process (worker.py); the event
loop only waits on its socket (from a helper thread), so it keeps taking requests meanwhile. If a batch
fails, its items are retried one by one, so that a bad item fails only its own request; if the model
process dies, the requests in flight get a 500 and the next request starts a new one.

Reasoning (`reasoning: true`) is not batched across requests: generation dominates its cost. Only
exported MOON models have an LM; the baselines answer 400 before any input is decoded.

Usage counts: the text inputs' tokens by the model's tokenizer (MiniLM's for `frozen`, the LM's for
an exported model; no special tokens); an encoder without a tokenizer (`random`) counts whitespace
words. Images count 0 tokens. With reasoning, the traces' tokens are added to total_tokens.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from ray import serve

from moon_ray.config import ServeConfig
from moon_ray.serve.errors import ApiError
from moon_ray.serve.validation import Item
from moon_ray.serve.worker import ModelWorker, WorkerDied


class Engine:
    """A model process served to many concurrent requests."""

    def __init__(self, worker: ModelWorker, scfg: ServeConfig, model_key: str):
        self.worker = worker
        info = worker.info
        self.model_id = info["name"]
        self.aliases = {info["name"], model_key, scfg.model}
        self.dim = int(info["dim"])
        self.dimensions = tuple(info["dimensions"])
        self.can_reason = bool(info["can_reason"])
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moon-model")
        self._embed_batch.set_max_batch_size(scfg.max_batch_size)
        self._embed_batch.set_batch_wait_timeout_s(scfg.batch_wait_timeout_s)

    def check_reasoning(self) -> None:
        """ApiError(400) when the model cannot generate reasoning traces."""
        if not self.can_reason:
            raise ApiError(400, f"model {self.model_id!r} has no language model, so it cannot generate a "
                                "reasoning trace; serve an exported MOON model (serve.model=<export dir>) or "
                                "drop 'reasoning'", param="reasoning", code="reasoning_unsupported")

    def accepts(self, model: str | None) -> bool:
        return model is None or model in self.aliases

    async def call(self, op: str, items: list[Item]):
        """`op` on the model process for these items; its failures as ApiErrors."""
        loop = asyncio.get_running_loop()
        images, texts = [it.image for it in items], [it.text for it in items]
        try:
            return await loop.run_in_executor(self.executor, self.worker.call, op, images, texts)
        except ValueError as e:
            raise ApiError(400, f"the input could not be embedded: {e}", code="invalid_input") from None
        except WorkerDied as e:
            raise ApiError(500, str(e), code="model_process_died") from None
        except RuntimeError as e:
            raise ApiError(500, f"the model failed: {e}", code="model_error") from None

    # ------------------------------------------------------------------------------- embeddings
    async def embed(self, items: list[Item]) -> tuple[np.ndarray, list[int]]:
        """(N, dim) float32 unit rows and each item's text tokens; each item joins the dynamic batch."""
        results = await asyncio.gather(*(self._embed_batch(item) for item in items))
        for r in results:
            if isinstance(r, Exception):
                raise r
        return np.stack([v for v, _ in results]).astype(np.float32, copy=False), [t for _, t in results]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _embed_batch(self, items: list[Item]) -> list[tuple[np.ndarray, int] | ApiError]:
        try:
            vecs, tokens = await self.call("encode", items)
            return list(zip(vecs, tokens, strict=True))
        except ApiError as e:
            if len(items) == 1 or e.code == "model_process_died":
                return [e] * len(items)
        return [await self._embed_one(item) for item in items]

    async def _embed_one(self, item: Item) -> tuple[np.ndarray, int] | ApiError:
        try:
            vecs, tokens = await self.call("encode", [item])
            return vecs[0], tokens[0]
        except ApiError as e:
            return e

    # -------------------------------------------------------------------------------- reasoning
    async def embed_with_reasoning(self, items: list[Item]) -> tuple[np.ndarray, list[str], list[int], list[int]]:
        """Embeddings of the items with their generated traces, the traces, and the token counts of both."""
        self.check_reasoning()
        return await self.call("reason", items)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.worker.close()
