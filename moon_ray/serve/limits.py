"""Per-key rate limits: token buckets of requests and of input items; 429 with Retry-After beyond them.

    limiter = RateLimiter.of(cfg.serve)          # None when no limit is configured
    limiter.check("team-a", "requests")          # ApiError(429) when the key's request bucket is empty
    limiter.check("team-a", "items", 16)         # the same for 16 input items

A bucket holds up to `burst` tokens and refills at `rate` per second; a request takes 1 request token
(checked by the `RateLimit` middleware, before the body is read) and one item token per input (checked
by the route once the body is parsed, before any image is decoded or the model runs). An empty bucket
answers 429 with `Retry-After` (whole seconds, at least 1) and `retry-after-ms` (what the OpenAI client
reads), the wait until the bucket holds enough again.

Buckets are per API key name (errors.BearerAuth puts it in the request state) and per replica: with N
replicas behind the proxy a key gets up to N times the rate, so set the rates per replica (fleet rate
/ serve.num_replicas). With no key configured (serve.auth=open) all callers share the "anonymous"
bucket of each replica. Defaults: request burst = one second's worth (at least 1); item burst = one
second's worth but at least serve.max_inputs, so that a largest request can pass.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

from moon_ray.config import ServeConfig
from moon_ray.infrastructure.timing import now
from moon_ray.serve.errors import ApiError, send_error

ANONYMOUS = "anonymous"
MAX_BUCKETS = 10_000  # distinct keys remembered per replica (least recently used forgotten first)


class TokenBucket:
    __slots__ = ("rate", "capacity", "tokens", "stamp")

    def __init__(self, rate: float, capacity: float, at: float):
        self.rate, self.capacity, self.tokens, self.stamp = rate, capacity, capacity, at

    def take(self, n: float, at: float) -> float:
        """Take n tokens: 0.0 when taken, else the seconds until n would be there (nothing taken)."""
        self.tokens = min(self.capacity, self.tokens + (at - self.stamp) * self.rate)
        self.stamp = at
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate


class RateLimiter:
    """Token buckets per (key, kind): kind is "requests" or "items"."""

    def __init__(self, limits: dict[str, tuple[float, float]], clock: Callable[[], float] = now,
                 on_refuse: Callable[[str, str], None] | None = None):
        self.limits = limits  # kind -> (rate per second, burst)
        self.clock = clock
        self.on_refuse = on_refuse
        self.buckets: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()

    @classmethod
    def of(cls, scfg: ServeConfig, on_refuse=None) -> RateLimiter | None:
        limits = {}
        if scfg.rate_limit_requests_per_s > 0:
            r = scfg.rate_limit_requests_per_s
            limits["requests"] = (r, float(scfg.rate_limit_request_burst or max(1, math.ceil(r))))
        if scfg.rate_limit_items_per_s > 0:
            r = scfg.rate_limit_items_per_s
            limits["items"] = (r, float(scfg.rate_limit_item_burst or max(scfg.max_inputs, math.ceil(r))))
        return cls(limits, on_refuse=on_refuse) if limits else None

    def limits_kind(self, kind: str) -> bool:
        return kind in self.limits

    def check(self, key: str | None, kind: str, n: int = 1) -> None:
        """Take n tokens of `kind` from the key's bucket, or raise ApiError(429) with Retry-After."""
        if kind not in self.limits:
            return
        rate, burst = self.limits[kind]
        name = key or ANONYMOUS
        at = self.clock()
        bucket = self.buckets.get((name, kind))
        if bucket is None:
            bucket = self.buckets[(name, kind)] = TokenBucket(rate, burst, at)
            if len(self.buckets) > MAX_BUCKETS:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end((name, kind))
        wait = bucket.take(n, at) if n <= burst else math.inf
        if wait == 0.0:
            return
        if self.on_refuse is not None:
            self.on_refuse(name, kind)
        if math.isinf(wait):  # more than the burst: never passes (the config check keeps this from happening)
            raise ApiError(429, f"{n} {kind} in one request is more than the burst of {burst:g} allowed per key",
                           code="rate_limit_exceeded")
        what = "requests" if kind == "requests" else "input items"
        setting = "serve.rate_limit_requests_per_s" if kind == "requests" else "serve.rate_limit_items_per_s"
        raise ApiError(429, f"rate limit reached for key {name!r}: {rate:g} {what} per second, burst {burst:g} "
                            f"({setting}); retry in {wait:.2f} s", code="rate_limit_exceeded",
                       headers={"Retry-After": str(max(1, math.ceil(wait))), "retry-after-ms": str(math.ceil(wait * 1000))})


class RateLimit:
    """ASGI middleware: one request token per request to /v1/*, before the body is read."""

    def __init__(self, app, limiter: RateLimiter | None):
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope, receive, send):
        from moon_ray.serve.errors import app_path

        if (scope["type"] != "http" or self.limiter is None or not self.limiter.limits_kind("requests")
                or not app_path(scope).startswith("/v1/")):
            return await self.app(scope, receive, send)
        try:
            self.limiter.check(scope.setdefault("state", {}).get("api_key"), "requests")
        except ApiError as e:
            return await send_error(send, e)
        return await self.app(scope, receive, send)
