"""Prometheus metrics of one replica: `GET /metrics` (text exposition format, no token needed).

    metrics = ServeMetrics(replica="abc123", model_pid=lambda: worker.pid)
    app.add_middleware(Observe, metrics=metrics)          # every request: route, status, latency
    metrics.batch("embed", 16, 0.31)                      # a model call of 16 items took 0.31 s

| metric                                        | type      | labels              | what                           |
| --------------------------------------------- | --------- | ------------------- | ------------------------------ |
| moon_serve_requests_total                     | counter   | route, kind, status | requests answered              |
| moon_serve_request_duration_seconds           | histogram | route, kind         | latency, middleware to answer  |
| moon_serve_requests_in_flight                 | gauge     |                     | requests being answered        |
| moon_serve_inputs_total                       | counter   | route, kind         | input items embedded           |
| moon_serve_model_batch_size                   | histogram | op                  | items per model call           |
| moon_serve_model_batch_duration_seconds       | histogram | op                  | seconds per model call         |
| moon_serve_queue_depth                        | gauge     | queue               | items waiting for the model; reasoning requests waiting on the reasoner |
| moon_serve_index_size                         | gauge     |                     | products in the index (0: search off) |
| moon_serve_ready                              | gauge     |                     | 1 when model and index are loaded |
| moon_serve_rate_limited_total                 | counter   | key, limit          | requests refused with 429      |
| moon_serve_info                               | info      | model, replica, index_fingerprint, trace_policy | what is served |
| moon_replica_process_* / moon_model_process_* | gauges    |                     | RSS, CPU seconds, fds of the replica and of its model process |

`route` is the route template (/v1/embeddings, /v1/search, /v1/models, /healthz, /readyz, /metrics, or
"other": unknown paths never become labels), `kind` is plain or reasoning, `op` is embed (this
replica's model process) or reason (the batches of MoonReasoner that this replica's requests joined).

Each replica counts its own requests, in a registry of its own (several applications can live in one
process); the `replica` label of moon_serve_info says which. A scrape through the Serve proxy reaches
one replica: scrape every replica (Kubernetes pod discovery) or Ray's own metrics endpoint, where
Ray Serve's built-in metrics (ray_serve_*: requests, latencies, queue lengths per deployment) are
exported for the whole cluster as always; nothing here turns them off.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from moon_ray.infrastructure.timing import Stopwatch
from moon_ray.serve.errors import app_path

ROUTES = ("/v1/embeddings", "/v1/search", "/v1/models", "/healthz", "/readyz", "/metrics")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def route_of(path: str) -> str:
    """The route template of a request path; 'other' for anything unknown (bounded label values)."""
    if path in ROUTES:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models"
    return "other"


class ServeMetrics:
    """The replica's metrics, in their own registry."""

    def __init__(self, replica: str = "", model_pid: Callable[[], int | None] | None = None):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("moon_serve_requests", "HTTP requests answered, by route template, kind "
                                "(plain or reasoning) and status code", ["route", "kind", "status"], registry=r)
        self.latency = Histogram("moon_serve_request_duration_seconds", "Request latency inside the replica",
                                 ["route", "kind"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("moon_serve_requests_in_flight", "Requests being answered", registry=r)
        self.inputs = Counter("moon_serve_inputs", "Input items embedded", ["route", "kind"], registry=r)
        self.batch_size = Histogram("moon_serve_model_batch_size", "Items per model call", ["op"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("moon_serve_model_batch_duration_seconds", "Seconds per model call", ["op"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("moon_serve_queue_depth", "Items waiting for the model (queue=embed), "
                                 "reasoning requests waiting on the reasoner (queue=reason)", ["queue"], registry=r)
        self.index_size = Gauge("moon_serve_index_size", "Products in the catalog index (0: search off)", registry=r)
        self.ready = Gauge("moon_serve_ready", "1 when the model and the index are loaded", registry=r)
        self.rate_limited = Counter("moon_serve_rate_limited", "Requests refused with 429, by key name and limit",
                                    ["key", "limit"], registry=r)
        self.info = Info("moon_serve", "The served model and index", registry=r)
        self.replica = replica
        ProcessCollector(namespace="moon_replica", registry=r)
        if model_pid is not None:
            ProcessCollector(namespace="moon_model", pid=lambda: model_pid() or "missing", registry=r)

    def describe(self, model: str, index: dict | None) -> None:
        index = index or {}
        self.info.info({"model": model, "replica": self.replica, "index_fingerprint": index.get("fingerprint") or "",
                        "trace_policy": ",".join(index.get("trace_policy_versions") or [])})
        self.index_size.set(index.get("size", 0))

    def batch(self, op: str, size: int, seconds: float) -> None:
        self.batch_size.labels(op).observe(size)
        self.batch_seconds.labels(op).observe(seconds)

    def observe(self, route: str, kind: str, status: int, seconds: float, inputs: int = 0) -> None:
        self.requests.labels(route, kind, str(status)).inc()
        self.latency.labels(route, kind).observe(seconds)
        if inputs and status == 200:
            self.inputs.labels(route, kind).inc(inputs)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Observe:
    """ASGI middleware, outermost: every request's route, kind, status and latency, refused ones included.

    Routes tell it more through the request state: `reasoning` (True: kind=reasoning) and `inputs`
    (items embedded)."""

    def __init__(self, app, metrics: ServeMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        status = 500

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        clock = Stopwatch()
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.in_flight.dec()
            kind = "reasoning" if state.get("reasoning") else "plain"
            self.metrics.observe(route_of(app_path(scope)), kind, status, clock.elapsed(), state.get("inputs", 0))
