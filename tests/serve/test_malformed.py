"""Every malformed request gets a 4xx in OpenAI's error shape that says what is wrong, and the replica
lives on: the same replica answers /healthz and a valid request afterwards.

The frozen app runs with small limits (conftest.LIMITS): 2 MB bodies, 8 inputs, 300 characters,
1 Mpx images, k <= 20.
"""

from __future__ import annotations

import base64
import io

import pytest

from tests.serve.conftest import data_url

OK = {"model": "frozen", "input": "Men Navy Blue Shirts"}


def png(width: int, height: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def cases(jpeg: bytes) -> dict[str, tuple]:
    """name -> (method, path, body: dict | bytes | None, status, words the message must contain)."""
    emb, search = "/v1/embeddings", "/v1/search"
    return {
        "bad json": ("POST", emb, b'{"model": "frozen", "input": ', 400, "not valid JSON"),
        "body not an object": ("POST", emb, b"[1, 2]", 400, "object"),
        "empty body": ("POST", emb, b"", 400, "not valid JSON"),
        "input a number": ("POST", emb, {**OK, "input": 5}, 400, "input must be a string"),
        "input token arrays": ("POST", emb, {**OK, "input": [1, 2, 3]}, 400, "token arrays"),
        "input empty list": ("POST", emb, {**OK, "input": []}, 400, "must not be empty"),
        "input empty string": ("POST", emb, {**OK, "input": ""}, 400, "non-empty 'text' or 'image'"),
        "text not a string": ("POST", emb, {**OK, "input": [{"text": 5}]}, 400, "input[0].text"),
        "missing model": ("POST", emb, {"input": "x"}, 400, "model: Field required"),
        "unknown model": ("POST", emb, {**OK, "model": "gpt-4"}, 404, "not served here"),
        "dimensions a string": ("POST", emb, {**OK, "dimensions": "16"}, 400, "dimensions"),
        "dimensions zero": ("POST", emb, {**OK, "dimensions": 0}, 400, "greater than or equal to 1"),
        "dimensions too large": ("POST", emb, {**OK, "dimensions": 4096}, 400, "larger than the 1664"),
        "dimensions not trained": ("POST", emb, {**OK, "dimensions": 16}, 400, "only its full 1664 dimensions"),
        "encoding format": ("POST", emb, {**OK, "encoding_format": "float16"}, 400, "encoding_format"),
        "unknown field": ("POST", emb, {**OK, "temperature": 1}, 400, "temperature: unknown field"),
        "unknown item field": ("POST", emb, {**OK, "input": [{"text": "a", "url": "x"}]}, 400,
                               "input[0].url: unknown field"),
        "reasoning not a bool": ("POST", emb, {**OK, "reasoning": "yes"}, 400, "reasoning"),
        "bad base64": ("POST", emb, {**OK, "input": [{"image": "not base64!!"}]}, 400, "not valid base64"),
        "data url not an image": ("POST", emb, {**OK, "input": [{"image": "data:text/plain;base64,aGk="}]}, 400,
                                  "not an image/* type"),
        "data url without base64": ("POST", emb, {**OK, "input": [{"image": "data:image/png,abc"}]}, 400,
                                    "data URL must look like"),
        "bytes not an image": ("POST", emb, {**OK, "input": [{"image": b64(b"hello, not a picture")}]}, 400,
                               "not an image"),
        "truncated jpeg": ("POST", emb, {**OK, "input": [{"image": b64(jpeg[: len(jpeg) // 2])}]}, 400,
                           "truncated"),
        "too many pixels": ("POST", emb, {**OK, "input": [{"image": png(1001, 1000)}]}, 400,
                            "1001x1000 = 1001000 pixels"),
        "too many inputs": ("POST", emb, {**OK, "input": ["a"] * 9}, 400, "too many inputs: 9"),
        "text too long": ("POST", emb, {**OK, "input": "x" * 301}, 400, "301 characters long"),
        "oversize body": ("POST", emb, b"{" + b" " * 2_000_001 + b"}", 413, "larger than the limit"),
        "search without query": ("POST", search, {"k": 3}, 400, "needs a non-empty 'text', 'image'"),
        "search k too large": ("POST", search, {"text": "a", "k": 21}, 400, "serve.max_top_k"),
        "search k zero": ("POST", search, {"text": "a", "k": 0}, 400, "k: "),
        "search unknown filter": ("POST", search, {"text": "a", "filters": {"price": "1"}}, 400,
                                  "unknown filter field 'price'"),
        "search filter value": ("POST", search, {"text": "a", "filters": {"gender": 5}}, 400, "filter 'gender'"),
        "search bad image": ("POST", search, {"image": "%%%"}, 400, "image is not valid base64"),
        "search reasoning on a query": ("POST", search, {"text": "a", "reasoning": True}, 400,
                                        "embeds queries as training does, without a reasoning trace"),
        "unknown input_type": ("POST", emb, {**OK, "input_type": "passage"}, 400, "input_type: Input should be"),
        "query with reasoning": ("POST", emb, {**OK, "reasoning": True}, 400, "does not apply to a query"),
        "document without image": ("POST", emb, {**OK, "input_type": "document"}, 400, "this one has no image"),
        "document without title": ("POST", emb, {**OK, "input_type": "document", "input": [{"image": b64(jpeg)}]},
                                   400, "has no title as 'text'"),
        "document reasoning on a baseline": ("POST", emb, {**OK, "input_type": "document", "reasoning": True}, 400,
                                             "has no language model"),
        "search unknown field": ("POST", search, {"text": "a", "top_k": 3}, 400, "top_k: unknown field"),
        "unknown route": ("GET", "/v1/nothing", None, 404, "no route GET /v1/nothing"),
        "wrong method": ("GET", emb, None, 405, "not allowed"),
    }


@pytest.fixture(scope="module")
def replica(served):
    import httpx

    r = httpx.get(served.url + "/healthz", timeout=60)
    assert r.status_code == 200
    return r.json()["replica"]


def assert_error(r, status: int, words: str) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert words in error["message"], error["message"]
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("name", list(cases(b"")))
def test_malformed_request(name, http, served, replica):
    method, path, body, status, words = cases(served.products[0]["image"])[name]
    if isinstance(body, bytes):
        r = http.request(method, path, content=body, headers={"Content-Type": "application/json"})
    else:
        r = http.request(method, path, json=body)
    assert_error(r, status, words)


def test_oversize_chunked_body_without_length(http, replica):
    chunks = (b" " * 65536 for _ in range(40))  # 2.6 MB, Transfer-Encoding: chunked
    assert_error(http.post("/v1/embeddings", content=chunks), 413, "larger than the limit")


@pytest.mark.parametrize("header", [None, "Bearer wrong-key", "Basic dGVzdC1rZXktMTIz", "Bearer"])
def test_missing_or_wrong_token(header, served, replica):
    import httpx

    headers = {"Authorization": header} if header else {}
    for method, path in (("POST", "/v1/embeddings"), ("GET", "/v1/models"), ("POST", "/v1/search")):
        r = httpx.request(method, served.url + path, json=OK, headers=headers, timeout=60)
        assert_error(r, 401, "API key")
        assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(served.url + "/healthz", timeout=60).status_code == 200  # open without a token


def test_same_replica_healthy_afterwards(http, served, replica):
    r = http.get("/healthz")
    assert r.status_code == 200 and r.json()["replica"] == replica and r.json()["status"] == "ok"
    r = http.post("/v1/embeddings", json={**OK, "input": [{"image": data_url(served.products[0]["image"])}]})
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 1664
