"""The HTTP API: a FastAPI app over one `Engine` (and a `CatalogIndex` when search is on).

    app = create_api(engine, index, cfg.serve, api_key)   # built on each replica by the deployment

| route                | answer                                                                     |
| -------------------- | -------------------------------------------------------------------------- |
| POST /v1/embeddings  | OpenAI's embeddings response; `reasoning` per item when asked for          |
| POST /v1/search      | the top-k catalog products (metadata + cosine score) for a text/image query |
| GET /v1/models       | OpenAI's model list: the one served model                                  |
| GET /v1/models/{id}  | that model, or 404                                                         |
| GET /healthz         | {"status": "ok", "model", "dim", "index_size", "replica", "batching"}; no token |

Bodies are parsed by the routes themselves (`Model.model_validate_json`), so every malformed body
becomes an `ApiError` with the field named (errors.py); exception handlers turn unknown routes,
wrong methods and any unexpected failure into the same OpenAI error shape.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from moon_ray.config import ServeConfig
from moon_ray.serve.engine import Engine
from moon_ray.serve.errors import ApiError, BearerAuth, BodyLimit, from_validation
from moon_ray.serve.schemas import EmbeddingRequest, SearchRequest
from moon_ray.serve.search import FILTER_FIELDS, CatalogIndex
from moon_ray.serve.validation import Limits, check_dimensions, encode_vector, to_items, truncate


def create_api(engine: Engine, index: CatalogIndex | None, scfg: ServeConfig, api_key: str | None,
               replica: str = "") -> FastAPI:
    app = FastAPI(title="moon-ray", docs_url=None, redoc_url=None, openapi_url=None)
    limits = Limits.of(scfg)
    created = int(time.time())
    install_handlers(app)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "model": engine.model_id, "dim": engine.dim,
                "index_size": index.size if index is not None else 0, "replica": replica,
                "batching": engine.batching()}

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
        return JSONResponse(await embeddings_response(engine, req, limits))

    @app.post("/v1/search")
    async def search(request: Request):
        req = parse(SearchRequest, await request.body())
        return JSONResponse(await search_response(engine, index, req, limits, scfg.max_top_k))

    app.add_middleware(BodyLimit, max_bytes=scfg.max_body_bytes)
    app.add_middleware(BearerAuth, key=api_key)  # added last: runs first, before the body is read
    return app


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
    if req.reasoning:
        engine.check_reasoning()  # before any image is decoded
    items = await items_of(req.input, limits, "input")
    traces, trace_tokens = None, []
    if req.reasoning:
        vecs, traces, tokens, trace_tokens = await engine.embed_with_reasoning(items)
    else:
        vecs, tokens = await engine.embed(items)
    vecs = truncate(vecs, dims)
    data = []
    for i, vec in enumerate(vecs):
        row = {"object": "embedding", "index": i, "embedding": encode_vector(vec, req.encoding_format)}
        if traces is not None:
            row["reasoning"] = traces[i]
        data.append(row)
    return {"object": "list", "data": data, "model": engine.model_id,
            "usage": usage(tokens, trace_tokens if traces is not None else None)}


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
    if req.reasoning:
        engine.check_reasoning()
    unknown = sorted(set(req.filters) - set(FILTER_FIELDS))
    if unknown:
        raise ApiError(400, f"unknown filter field {unknown[0]!r}; filterable: {', '.join(FILTER_FIELDS)}",
                       param=f"filters.{unknown[0]}", code="invalid_filter")
    items = await items_of([req.query()], limits, "")
    trace, trace_tokens = None, None
    if req.reasoning:
        vecs, traces, tokens, trace_tokens = await engine.embed_with_reasoning(items)
        trace = traces[0]
    else:
        vecs, tokens = await engine.embed(items)
    hits = await asyncio.to_thread(index.search, vecs[0], req.k, req.filters)
    data = [{"object": "search_result", **hit} for hit in hits]
    query = {"kind": items[0].kind, "filters": req.filters, "k": req.k}
    if trace is not None:
        query["reasoning"] = trace
    return {"object": "list", "data": data, "model": engine.model_id, "query": query,
            "usage": usage(tokens, trace_tokens)}


def install_handlers(app: FastAPI) -> None:
    """Every error, whatever raised it, leaves as OpenAI's {"error": {...}} with a fitting status."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError):
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code == 404:
            err = ApiError(404, f"no route {request.method} {request.url.path}; routes: POST /v1/embeddings, "
                                "POST /v1/search, GET /v1/models, GET /healthz", code="not_found")
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
