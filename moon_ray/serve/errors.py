"""Errors in OpenAI's shape, and the guards that run before any route: body size and bearer token.

Every refused request gets a JSON body

    {"error": {"message": "input[0].image: not valid base64 ...", "type": "invalid_request_error",
               "param": "input[0].image", "code": "invalid_base64"}}

with a 4xx status that says what is wrong: 400 malformed or out-of-limit input, 401 missing or wrong
token, 404 unknown model or route, 405 wrong method, 413 body too large, 429 over the key's rate
limit (limits.py; with Retry-After). A failure inside the model is a 500 in the same shape; it never
takes the replica down; 503 (with Retry-After) when the reasoning deployment is at capacity, 504 when
it does not answer in time.

The guards are plain ASGI middleware, so they act before FastAPI reads anything:

- `BodyLimit` reads the body itself, counting bytes; past `max_bytes` it answers 413 (after draining
  at most a few times the limit, so that the client sees the answer instead of a reset connection) and
  the route never runs. Otherwise the buffered body is replayed to the app.
- `BearerAuth` compares `Authorization: Bearer <key>` in constant time against every configured key
  (`parse_keys`: "k1,k2" or "team-a:k1,team-b:k2") and puts the key's name in the request state
  (`api_key`, for the per-key rate limit); paths in `open_paths` (/healthz, /readyz, /metrics) need
  no token. With no key configured it lets everything through.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
               405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
               503: "service_unavailable", 504: "timeout", 500: "server_error"}
OPEN_PATHS = ("/healthz", "/readyz", "/metrics")


class ApiError(Exception):
    """A request refused (or failed) with an HTTP status and an OpenAI-shaped body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        kind = ERROR_TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def from_validation(error) -> ApiError:
    """A pydantic ValidationError -> 400 naming the field(s): 'input[0].image: Extra inputs are not permitted'."""
    parts, first = [], None
    for e in error.errors()[:3]:
        where = location(e.get("loc", ()))
        first = first or where
        message = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
        if e.get("type") == "extra_forbidden":
            message = "unknown field (not part of this API)"
        if e.get("type") == "json_invalid":
            return ApiError(400, f"the request body is not valid JSON: {e.get('ctx', {}).get('error', message)}",
                            code="invalid_json")
        parts.append(f"{where}: {message}" if where else message)
    more = len(error.errors()) - 3
    text = "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
    return ApiError(400, text, param=first or None, code="invalid_value")


def location(loc) -> str:
    """('input', 2, 'image') -> 'input[2].image'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


async def send_error(send, err: ApiError) -> None:
    """Answer an ASGI request with `err` (used by the middleware, outside FastAPI)."""
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def app_path(scope) -> str:
    """The request path inside the application (the route prefix / root_path removed)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root):] or "/"
    return path


class BodyLimit:
    """Refuse bodies over `max_bytes` with 413, whether or not Content-Length says so."""

    def __init__(self, app, max_bytes: int, drain_factor: int = 4):
        self.app = app
        self.max_bytes = max_bytes
        self.drain_limit = max_bytes * drain_factor + (1 << 20)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and not declared.strip().isdigit():
            return await send_error(send, ApiError(400, "the Content-Length header is not a number",
                                                   code="invalid_content_length"))
        size = int(declared) if declared is not None else None
        chunks, total, too_big = [], 0, size is not None and size > self.max_bytes
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            total += len(message.get("body", b""))
            too_big = too_big or total > self.max_bytes
            if not too_big:
                chunks.append(message.get("body", b""))
            if not message.get("more_body", False) or (too_big and total > self.drain_limit):
                break
        if too_big:
            shown = size if size is not None else f"more than {total}"
            return await send_error(send, ApiError(
                413, f"the request body ({shown} bytes) is larger than the limit of {self.max_bytes} bytes "
                     "(serve.max_body_bytes)", code="request_too_large"))
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


def parse_keys(text: str | None) -> dict[str, str]:
    """"k1,k2" or "team-a:k1,team-b:k2" -> {key: name}; an unnamed key is named key-<8 hex of its hash>
    (names label metrics and rate limits; the keys themselves never leave this process)."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, key = part.partition(":")
        if not sep:
            name, key = f"key-{hashlib.sha256(part.encode()).hexdigest()[:8]}", part
        if not key.strip() or not name.strip():
            raise ValueError("an API key entry is empty: write keys as 'key' or 'name:key', separated by commas")
        out[key.strip()] = name.strip()
    return out


class BearerAuth:
    """Require `Authorization: Bearer <key>` on every path but `open_paths`; no key: no check."""

    def __init__(self, app, keys: str | dict[str, str] | None, open_paths: tuple[str, ...] = OPEN_PATHS):
        self.app = app
        named = parse_keys(keys) if isinstance(keys, str) or keys is None else keys
        self.keys = [(k.encode("latin-1"), name) for k, name in named.items()]
        self.open_paths = set(open_paths)

    def identify(self, token: bytes) -> str | None:
        """The name of the key equal to `token`, comparing against every key in constant time."""
        found = None
        for key, name in self.keys:
            if hmac.compare_digest(token, key):
                found = name
        return found

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.keys or app_path(scope) in self.open_paths:
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or []).get(b"authorization")
        challenge = {"WWW-Authenticate": "Bearer"}
        if not header:
            return await send_error(send, ApiError(
                401, "missing API key: send the header 'Authorization: Bearer <key>'", code="missing_api_key",
                headers=challenge))
        scheme, _, token = header.decode("latin-1").partition(" ")
        name = self.identify(token.strip().encode("latin-1")) if scheme.lower() == "bearer" else None
        if name is None:
            return await send_error(send, ApiError(401, "incorrect API key provided", code="invalid_api_key",
                                                   headers=challenge))
        scope.setdefault("state", {})["api_key"] = name
        return await self.app(scope, receive, send)
