"""Creative selection on Serve: POST /v1/creative/select, answered by a trained creative selector.

    moon-ray serve --model outputs/train/export serve.creative_model=outputs/creative/grpo
    curl -s $URL/v1/creative/select -H 'Content-Type: application/json' \\
        -d '{"image_a": "<base64>", "image_b": "data:image/jpeg;base64,...", "interest": "prefers casual blue menswear"}'
    # {"object": "creative.selection", "choice": "B", "explanation": "Image A is blurred ...", "model": "grpo",
    #  "well_formed": true}

The selector (moon_ray/creative: a directory written by `moon-ray creative train`, named in
`serve.creative_model`) runs in `MoonCreative`, a deployment of its own beside the embeddings' ingress, as
the reasoning deployment does: an answer is a generation (up to creative.max_answer_tokens tokens, greedy,
as `moon-ray creative eval` answers), far slower than an embedding, so it never holds the ingress's model
process. Requests share generation batches: their pairs wait in one queue (engine.ModelQueue) and each
model call answers up to `serve.creative_batch_size` of them, off the replica's event loop.

The ingress validates the request as it validates embeddings (validation.py, errors.py: a bad field is a
400 naming it; images are base64 or data URLs, decoded and bounded before the model sees them) and asks
the deployment through a handle (`CreativeClient`); a deployment without `serve.creative_model` answers
404 `creative_not_configured`. `choice` is "A" or "B" from the answer's `<answer>` tag and `explanation`
its `<think>` text; an answer out of that format has choice null, well_formed false and the raw text as
its explanation (it is never guessed into a choice).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import serve

from moon_ray.config import Config, ConfigError, build
from moon_ray.serve.engine import ModelQueue, per_item
from moon_ray.serve.errors import ApiError
from moon_ray.serve.worker import replica_actor_options


@dataclass(frozen=True)
class CreativeItem:
    """One pair to judge: the two creatives' encoded bytes (validated) and the shopper's interest text."""

    image_a: bytes
    image_b: bytes
    interest: str


def creative_model_id(path: str | Path) -> str:
    """The served selector's name: its directory's name (outputs/creative/grpo -> "grpo")."""
    return Path(path).name


def check_creative_model(path: str | None) -> None:
    """ConfigError naming serve.creative_model unless it is a directory written by `moon-ray creative train`."""
    from moon_ray.creative.model import META, WEIGHTS

    if path is not None and not ((Path(path) / WEIGHTS).is_file() and (Path(path) / META).is_file()):
        raise ConfigError(f"serve.creative_model: {path} is not a creative selector (needs {WEIGHTS} and {META}, "
                          "written by `moon-ray creative train`)")


class CreativeService:
    """A creative selector answering pairs in shared batches, its generation on a helper thread."""

    def __init__(self, path: str | Path, max_tokens: int, batch_size: int, threads: int = 1):
        import torch

        from moon_ray.creative.model import CreativeSelector

        check_creative_model(str(path))
        torch.set_num_threads(max(1, threads))
        self.selector = CreativeSelector.load(path)
        self.model_id, self.max_tokens = creative_model_id(path), max_tokens
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moon-creative")
        self.queue = ModelQueue(self._answer, batch_size)

    @classmethod
    def of(cls, cfg: Config) -> CreativeService:
        s = cfg.serve
        return cls(s.creative_model, cfg.creative.max_answer_tokens, s.creative_batch_size,
                   threads=int(s.creative_cpus_per_replica))

    async def select(self, item: CreativeItem) -> dict[str, Any]:
        """The selection for one pair (its generation batched with concurrent requests' pairs)."""
        (result,) = await asyncio.gather(*self.queue.submit([item]))
        if isinstance(result, ApiError):
            raise result
        return result

    async def _answer(self, items: list[CreativeItem]) -> list:
        async def run(chunk: list[CreativeItem]):
            loop = asyncio.get_running_loop()
            try:
                texts = await loop.run_in_executor(self.executor, self._generate, chunk)
            except (ValueError, OSError) as e:
                raise ApiError(400, f"the pair could not be judged: {e}", code="invalid_input") from None
            return [self.selection(t) for t in texts]

        return await per_item(run, items)

    def _generate(self, items: list[CreativeItem]) -> list[str]:
        import torch

        with torch.inference_mode():
            return self.selector.generate([i.image_a for i in items], [i.image_b for i in items],
                                          [i.interest for i in items], self.max_tokens)

    def selection(self, text: str) -> dict[str, Any]:
        from moon_ray.creative.answer import parse_answer

        parsed = parse_answer(text)
        return {"object": "creative.selection", "choice": parsed.choice, "explanation": parsed.reasoning,
                "model": self.model_id, "well_formed": parsed.well_formed}


@serve.deployment(name="MoonCreative")
class MoonCreative:
    """Replicas of the creative selector; results travel as plain data, errors as {"error": (status,
    message, param, code)} (an ApiError raised here would reach the caller wrapped by Ray)."""

    def __init__(self, config: dict):
        self.service = CreativeService.of(build(Config, config))

    async def __call__(self, item: CreativeItem) -> dict[str, Any]:
        try:
            return await self.service.select(item)
        except ApiError as e:
            return {"error": (e.status, e.message, e.param, e.code)}


class CreativeClient:
    """The ingress's side: the MoonCreative handle, with serve.creative_timeout_s and errors as ApiErrors.
    `CreativeService` has the same `select`, so the route runs over either."""

    def __init__(self, handle, model_id: str, timeout_s: float):
        self.handle, self.model_id, self.timeout_s = handle, model_id, timeout_s

    async def select(self, item: CreativeItem) -> dict[str, Any]:
        response = self.handle.remote(item)

        async def result():
            return await response

        try:
            out = await asyncio.wait_for(result(), timeout=self.timeout_s)
        except TimeoutError:
            response.cancel()
            raise ApiError(504, f"the creative selection took longer than {self.timeout_s:g} s "
                                "(serve.creative_timeout_s)", code="creative_timeout") from None
        if "error" in out:
            status, message, param, code = out["error"]
            raise ApiError(status, message, param=param, code=code)
        return out


def creative_options(cfg: Config) -> dict[str, Any]:
    s = cfg.serve
    return {"ray_actor_options": replica_actor_options(cfg, s.creative_cpus_per_replica, 0.0),
            "num_replicas": s.creative_replicas, "logging_config": {"enable_access_log": s.access_log}}
