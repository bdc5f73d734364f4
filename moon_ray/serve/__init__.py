"""Serving on Ray Serve: an OpenAI-compatible embeddings API and catalog search over one model.

    moon-ray index --model outputs/train/export       # once: the catalog index (moon_ray/eval/index_job.py)
    moon-ray serve --model outputs/train/export       # replicas load outputs/train/export-index
    moon-ray serve                                    # the frozen baseline (outputs/index-frozen if built)
    serve run pipelines/configs/serve.yaml            # the same application from a Serve config file

| module        | role                                                                        |
| ------------- | --------------------------------------------------------------------------- |
| app.py        | the deployments' builder `build_app`, the ingress replica, `moon-ray serve` |
| api.py        | the FastAPI routes: /v1/embeddings, /v1/search, /v1/creative/select, /v1/models, /healthz, /readyz, /metrics |
| engine.py     | the model behind the routes: dynamic batching, token counts, the reasoner handle |
| reasoner.py   | MoonReasoner: reasoning=true requests on replicas of their own, batched     |
| creative.py   | MoonCreative: POST /v1/creative/select (serve.creative_model), batched      |
| worker.py     | the model's own process beside the replica (no GIL shared with the loops)   |
| search.py     | the loaded catalog index (artifact: moon_ray/eval/index_artifact.py), filtered search |
| metrics.py    | Prometheus metrics of a replica and the middleware that counts every request |
| limits.py     | per-key token-bucket rate limits (requests, input items): 429 + Retry-After |
| schemas.py    | request models (pydantic, unknown fields refused)                           |
| validation.py | inputs -> (image bytes, text) items; Matryoshka truncation; output encoding |
| errors.py     | OpenAI-shaped errors; body-size and bearer-token guards (ASGI middleware)   |
"""
