"""The HTTP API: a FastAPI app over one `Engine` (and a `CatalogIndex` when search is on).

    app = create_api(engine, index, cfg.serve, keys, replica=..., metrics=ServeMetrics(...))   # per replica
    app = create_api(..., creative=CreativeClient(handle, "grpo", timeout_s))   # with POST /v1/creative/select

| route                | answer                                                                     |
| -------------------- | -------------------------------------------------------------------------- |
| POST /v1/embeddings  | OpenAI's embeddings response; `input_type` query (default) or document (a product, as the index embeds it: its `reasoning` trace per item when the model reasons) |
| POST /v1/search      | the top-k catalog products (metadata + cosine score) for a text/image query |
| POST /v1/creative/select | which of two creatives (A, B) suits the shopper, and why (creative.py); 404 unless serve.creative_model |
| GET /v1/models       | OpenAI's model list: the one served model                                  |
| GET /v1/models/{id}  | that model, or 404                                                         |
| GET /healthz         | liveness: 200 while the replica answers; model, index size, batching; no token |
| GET /readyz          | readiness: 200 when the model process is up and the index is loaded (or search is off), else 503 |
| GET /metrics         | Prometheus text format (metrics.py); no token                              |

Bodies are parsed by the routes themselves (`Model.model_validate_json`), so every malformed body
becomes an `ApiError` with the field named (errors.py); exception handlers turn unknown routes,
wrong methods and any unexpected failure into the same OpenAI error shape. Middleware, outermost
first: Observe (metrics) -> BearerAuth (key -> name) -> RateLimit (a request token per key) ->
BodyLimit; the routes take the item tokens (limits.py) once the body is parsed.

Readiness: Serve routes requests to a replica only once its constructor has loaded the model and the
index, so a reachable replica starts ready; /readyz turns 503 when the model process has died (it is
restarted at once, in the background, and the replica is ready again when it is back).
"""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from moon_ray.config import ServeConfig
from moon_ray.serve.engine import Engine
from moon_ray.serve.errors import ApiError, BearerAuth, BodyLimit, from_validation
from moon_ray.serve.limits import RateLimit, RateLimiter
from moon_ray.serve.metrics import Observe, ServeMetrics
from moon_ray.serve.schemas import CreativeRequest, EmbeddingRequest, SearchRequest
from moon_ray.serve.search import FILTER_FIELDS, CatalogIndex
from moon_ray.serve.validation import (
    Limits,
    check_dimensions,
    decode_image,
    encode_vector,
    to_items,
    truncate,
)


def create_api(engine: Engine, index: CatalogIndex | None, scfg: ServeConfig, keys: dict[str, str] | None,
               replica: str = "", metrics: ServeMetrics | None = None, startup: dict | None = None,
               creative=None) -> FastAPI:
    """The routes over `engine` (and `index`); `creative`: anything with `model_id` and an async
    `select(CreativeItem)` (creative.py: the deployment's client, or the service itself), None: no selector."""
    app = FastAPI(title="moon-ray", docs_url=None, redoc_url=None, openapi_url=None)
    limits = Limits.of(scfg)
    created = int(time.time())
    metrics = metrics or ServeMetrics(replica, model_pid=lambda: engine.worker.pid)
    limiter = RateLimiter.of(scfg, on_refuse=lambda key, kind: metrics.rate_limited.labels(key, kind).inc())
    search_on = scfg.index_limit != 0
    index_info = index.describe() if index is not None else None
    metrics.describe(engine.model_id, index_info)
    metrics.queue_depth.labels("embed").set_function(lambda: engine.queue.depth)
    metrics.queue_depth.labels("reason").set_function(lambda: engine.reasoning_inflight)
    metrics.ready.set_function(lambda: float(readiness(engine, index, search_on)[0]))
    install_handlers(app)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "model": engine.model_id, "dim": engine.dim,
                "index_size": index.size if index is not None else 0, "replica": replica,
                "batching": engine.batching(), "creative_model": creative.model_id if creative is not None else None}

    @app.get("/readyz")
    async def readyz():
        ready, body = readiness(engine, index, search_on)
        body.update(replica=replica, index=index_info or {"loaded": False, "search": "on" if search_on else "off"},
                    reasoning=engine.can_reason, startup_s=startup or {})
        if not ready and not engine.worker.alive():
            asyncio.get_running_loop().run_in_executor(engine.executor, engine.worker.ensure)
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def prometheus():
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card(engine, created)]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if not engine.accepts(model_id):
            raise unknown_model(engine, model_id)
        return model_card(engine, created)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        req = parse(EmbeddingRequest, await request.body())
        admit(request, limiter, req.input_type == "document" and engine.reasons, len(req.input))
        return JSONResponse(await embeddings_response(engine, req, limits))

    @app.post("/v1/search")
    async def search(request: Request):
        req = parse(SearchRequest, await request.body())
        admit(request, limiter, False, 1)
        return JSONResponse(await search_response(engine, index, req, limits, scfg.max_top_k))

    @app.post("/v1/creative/select")
    async def creative_select(request: Request):
        if creative is None:
            raise ApiError(404, "no creative selector is served here: deploy with serve.creative_model=<a directory "
                                "written by `moon-ray creative train`> to answer POST /v1/creative/select",
                           code="creative_not_configured")
        req = parse(CreativeRequest, await request.body())
        admit(request, limiter, False, 1)
        return JSONResponse(await creative_response(creative, req, limits))

    app.add_middleware(BodyLimit, max_bytes=scfg.max_body_bytes)
    app.add_middleware(RateLimit, limiter=limiter)
    app.add_middleware(BearerAuth, keys=keys or {})  # before the body is read
    app.add_middleware(Observe, metrics=metrics)  # added last: runs first, sees every answer
    return app


def admit(request: Request, limiter: RateLimiter | None, reasoning: bool, inputs: int) -> None:
    """Tell the metrics what the request is; take its item tokens (429 when the key has none left)."""
    request.state.reasoning = reasoning
    request.state.inputs = inputs
    if limiter is not None:
        limiter.check(getattr(request.state, "api_key", None), "items", inputs)


def readiness(engine: Engine, index: CatalogIndex | None, search_on: bool) -> tuple[bool, dict]:
    """(ready, what is loaded): the model process up, and the index loaded unless search is off."""
    model_up = engine.worker.alive()
    index_ok = index is not None or not search_on
    body = {"status": "ready" if model_up and index_ok else "not_ready", "model": engine.model_id,
            "model_loaded": model_up, "model_pid": engine.worker.pid, "index_loaded": index is not None}
    return model_up and index_ok, body


def parse(model_cls, body: bytes):
    try:
        return model_cls.model_validate_json(body)
    except ValidationError as e:
        raise from_validation(e) from None


def model_card(engine: Engine, created: int) -> dict:
    return {"id": engine.model_id, "object": "model", "created": created, "owned_by": "moon-ray",
            "dim": engine.dim, "dimensions": list(engine.dimensions), "reasoning": engine.can_reason}


def unknown_model(engine: Engine, name: str) -> ApiError:
    return ApiError(404, f"model {name!r} is not served here; this server serves {engine.model_id!r} "
                         "(GET /v1/models)", param="model", code="model_not_found")


async def items_of(inputs, limits: Limits, param: str):
    """Validate inputs; image decoding runs off the event loop."""
    if any(getattr(i, "image", None) for i in inputs):
        return await asyncio.to_thread(to_items, inputs, limits, param)
    return to_items(inputs, limits, param)


async def embeddings_response(engine: Engine, req: EmbeddingRequest, limits: Limits) -> dict:
    if not engine.accepts(req.model):
        raise unknown_model(engine, req.model)
    dims = check_dimensions(req.dimensions, engine.dim, engine.dimensions, engine.model_id)
    engine.check_reasoning(req.input_type, req.reasoning)  # before any image is decoded
    document = req.input_type == "document"
    if document:
        check_documents(req.input)
    items = await items_of(req.input, limits, "input")
    traces, trace_tokens = None, None
    if document:
        vecs, traces, tokens, trace_tokens = await engine.embed_documents(items)
    else:
        vecs, tokens = await engine.embed(items)
    vecs = truncate(vecs, dims)
    data = []
    for i, vec in enumerate(vecs):
        row = {"object": "embedding", "index": i, "embedding": encode_vector(vec, req.encoding_format)}
        if traces is not None:
            row["reasoning"] = traces[i]
        data.append(row)
    return {"object": "list", "data": data, "model": engine.model_id, "usage": usage(tokens, trace_tokens)}


def check_documents(inputs) -> None:
    """A document is a product: its image and its title (text), as the index embeds it; 400 naming the
    first missing one."""
    for i, item in enumerate(inputs):
        for field in ("image", "text"):
            if not getattr(item, field):
                what = "image" if field == "image" else "title as 'text'"
                raise ApiError(400, f"input[{i}] is a document (input_type='document'): a product is embedded from "
                                    f"its image and its title, and this one has no {what}",
                               param=f"input[{i}].{field}", code="invalid_document")


def usage(tokens: list[int], trace_tokens: list[int] | None) -> dict:
    """OpenAI's usage; with reasoning, the traces' tokens count in total_tokens (and reasoning_tokens)."""
    prompt, extra = int(sum(tokens)), int(sum(trace_tokens or []))
    out = {"prompt_tokens": prompt, "total_tokens": prompt + extra}
    if trace_tokens is not None:
        out["reasoning_tokens"] = extra
    return out


async def search_response(engine: Engine, index: CatalogIndex | None, req: SearchRequest, limits: Limits,
                          max_k: int) -> dict:
    if not engine.accepts(req.model):
        raise unknown_model(engine, req.model)
    if index is None:
        raise ApiError(503, "search is off: this deployment has no catalog index (serve.index_limit=0)",
                       code="search_unavailable")
    if req.k > max_k:
        raise ApiError(400, f"k={req.k} is larger than {max_k} (serve.max_top_k)", param="k", code="invalid_k")
    engine.check_reasoning("query", req.reasoning)  # a search query is a query: no trace
    unknown = sorted(set(req.filters) - set(FILTER_FIELDS))
    if unknown:
        raise ApiError(400, f"unknown filter field {unknown[0]!r}; filterable: {', '.join(FILTER_FIELDS)}",
                       param=f"filters.{unknown[0]}", code="invalid_filter")
    items = await items_of([req.query()], limits, "")
    vecs, tokens = await engine.embed(items)
    hits = await asyncio.to_thread(index.search, vecs[0], req.k, req.filters)
    data = [{"object": "search_result", **hit} for hit in hits]
    query = {"kind": items[0].kind, "filters": req.filters, "k": req.k}
    return {"object": "list", "data": data, "model": engine.model_id, "query": query, "usage": usage(tokens, None)}


async def creative_response(creative, req: CreativeRequest, limits: Limits) -> dict:
    """Validate the pair as embeddings inputs are validated (400 naming the field), then ask the selector."""
    from moon_ray.serve.creative import CreativeItem

    if req.model is not None and req.model != creative.model_id:
        raise ApiError(404, f"creative model {req.model!r} is not served here; this server's creative selector is "
                            f"{creative.model_id!r}", param="model", code="model_not_found")
    interest = req.interest or ""
    if len(interest) > limits.max_text_chars:
        raise ApiError(400, f"interest is {len(interest)} characters long (at most {limits.max_text_chars}, "
                            "serve.max_text_chars)", param="interest", code="text_too_long")
    image_a, image_b = await asyncio.gather(*(asyncio.to_thread(decode_image, getattr(req, f), limits.max_image_pixels, f)
                                              for f in ("image_a", "image_b")))
    return await creative.select(CreativeItem(image_a=image_a, image_b=image_b, interest=interest))


def install_handlers(app: FastAPI) -> None:
    """Every error, whatever raised it, leaves as OpenAI's {"error": {...}} with a fitting status."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError):
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code == 404:
            err = ApiError(404, f"no route {request.method} {request.url.path}; routes: POST /v1/embeddings, "
                                "POST /v1/search, POST /v1/creative/select, GET /v1/models, GET /healthz, "
                                "GET /readyz, GET /metrics",
                           code="not_found")
        elif exc.status_code == 405:
            err = ApiError(405, f"method {request.method} is not allowed on {request.url.path}",
                           code="method_not_allowed", headers=dict(exc.headers or {}))
        else:
            err = ApiError(exc.status_code, str(exc.detail), code="http_error")
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError):
        err = ApiError(400, "; ".join(str(e.get("msg")) for e in exc.errors()[:3]) or "invalid request")
        return JSONResponse(err.body(), status_code=400)

    @app.exception_handler(Exception)
    async def server_error(_: Request, exc: Exception):
        err = ApiError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error")
        return JSONResponse(err.body(), status_code=500)
