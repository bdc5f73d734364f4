"""Serving on Ray Serve: an OpenAI-compatible embeddings API and catalog search over one model.

    moon-ray serve                                    # the frozen baseline over outputs/catalog
    moon-ray serve --model outputs/train/export serve.index_limit=500
    serve run pipelines/configs/serve.yaml            # the same application from a Serve config file

| module        | role                                                                        |
| ------------- | --------------------------------------------------------------------------- |
| app.py        | the Serve deployment, the application builder `build_app`, `moon-ray serve` |
| api.py        | the FastAPI routes: /v1/embeddings, /v1/search, /v1/models, /healthz        |
| engine.py     | the model behind the routes: dynamic batching, reasoning, token counts      |
| worker.py     | the model's own process beside the replica (no GIL shared with the loops)   |
| search.py     | the catalog index: build from product shards, save, load, filtered search   |
| schemas.py    | request models (pydantic, unknown fields refused)                           |
| validation.py | inputs -> (image bytes, text) items; Matryoshka truncation; output encoding |
| errors.py     | OpenAI-shaped errors; body-size and bearer-token guards (ASGI middleware)   |
"""
