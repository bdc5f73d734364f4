"""Production behaviour over HTTP: per-key rate limits (429 + Retry-After), readiness, Prometheus metrics,
and reasoning served by its own deployment.

    .venv/bin/python -m pytest -q tests/serve/test_production.py
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serve.conftest import LIMITED_KEYS, data_url


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {LIMITED_KEYS[name]}"}


def samples(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from GET /metrics (no token needed)."""
    r = httpx.get(f"{url}/metrics", timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_request_rate_limit_per_key(served):
    url = f"{served.limited_url}/v1/embeddings"
    body = {"model": "random", "input": "x"}
    codes = [httpx.post(url, json=body, headers=auth("team-a"), timeout=60) for _ in range(5)]
    assert [r.status_code for r in codes[:2]] == [200, 200]  # the burst of 2
    refused = next(r for r in codes[2:] if r.status_code == 429)  # 2 per second: not 3 more in a row
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "rate_limit_exceeded" and "team-a" in refused.json()["error"]["message"]
    assert int(refused.headers["retry-after"]) >= 1 and 0 < int(refused.headers["retry-after-ms"]) <= 500
    assert httpx.post(url, json=body, headers=auth("team-b"), timeout=60).status_code == 200  # its own bucket
    time.sleep(int(refused.headers["retry-after-ms"]) / 1000 + 0.05)
    assert httpx.post(url, json=body, headers=auth("team-a"), timeout=60).status_code == 200  # as told
    assert httpx.get(f"{served.limited_url}/healthz").status_code == 200  # probes are never limited


def test_item_rate_limit_counts_inputs(served):
    url = f"{served.limited_url}/v1/embeddings"
    eight = {"model": "random", "input": [f"title {i}" for i in range(8)]}
    assert httpx.post(url, json=eight, headers=auth("team-c"), timeout=60).status_code == 200  # burst of 8 items
    r = httpx.post(url, json=eight, headers=auth("team-c"), timeout=60)
    assert r.status_code == 429 and "input items" in r.json()["error"]["message"]
    assert r.headers["retry-after"] == "2"  # 8 items at 4 per second: ~2 s until the bucket holds 8 again
    found = samples(served.limited_url)
    assert value(found, "moon_serve_rate_limited_total", key="team-c", limit="items") >= 1
    assert value(found, "moon_serve_requests_total", route="/v1/embeddings", kind="plain", status="429") >= 1


def test_readiness_follows_the_model_process(served):
    url = served.limited_url
    ready = httpx.get(f"{url}/readyz", timeout=60)
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready" and body["model_loaded"] and body["index"] == {"loaded": False, "search": "off"}
    assert set(body["startup_s"]) >= {"model_load_s", "index_load_s", "total_s"}
    os.kill(body["model_pid"], signal.SIGKILL)  # the model process dies: not ready until it is back
    deadline, seen = time.monotonic() + 120, []
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/readyz", timeout=60)
        seen.append(r.status_code)
        if r.status_code == 200 and r.json()["model_pid"] != body["model_pid"]:
            break
        time.sleep(0.2)
    assert 503 in seen and seen[-1] == 200, seen  # restarted by the probe itself, with no traffic
    r = httpx.post(f"{url}/v1/embeddings", json={"model": "random", "input": "x"}, headers=auth("team-b"), timeout=60)
    assert r.status_code == 200
    tiny = httpx.get(f"{served.tiny_url}/readyz", timeout=60).json()
    assert tiny["index_loaded"] and tiny["index"]["size"] == 20 and tiny["reasoning"] is True


def test_metrics_count_routes_batches_and_the_index(served):
    headers = {"Authorization": f"Bearer {served.key}"}
    before = samples(served.tiny_url)
    for text in ("red dress", "blue jeans", "white shoes"):
        assert httpx.post(f"{served.tiny_url}/v1/embeddings", json={"model": "tiny", "input": text},
                          headers=headers, timeout=60).status_code == 200
    assert httpx.post(f"{served.tiny_url}/v1/embeddings", json={"model": "tiny", "input": "x"},
                      timeout=60).status_code == 401
    assert httpx.get(f"{served.tiny_url}/no/such/route", headers=headers, timeout=60).status_code == 404
    after = samples(served.tiny_url)

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("moon_serve_requests_total", route="/v1/embeddings", kind="plain", status="200") == 3
    assert grew("moon_serve_requests_total", route="/v1/embeddings", kind="plain", status="401") == 1
    assert grew("moon_serve_requests_total", route="other", kind="plain", status="404") == 1
    assert grew("moon_serve_request_duration_seconds_count", route="/v1/embeddings", kind="plain") == 4
    assert grew("moon_serve_inputs_total", route="/v1/embeddings", kind="plain") == 3
    assert grew("moon_serve_model_batch_size_count", op="embed") >= 1
    assert grew("moon_serve_model_batch_size_sum", op="embed") == 3
    assert value(after, "moon_serve_index_size") == 20 and value(after, "moon_serve_ready") == 1
    assert ("moon_serve_queue_depth", (("queue", "embed"),)) in after
    assert value(after, "moon_model_process_resident_memory_bytes") > 10_000_000  # the model process
    assert value(after, "moon_replica_process_resident_memory_bytes") > 10_000_000
    info = [k for k in after if k[0] == "moon_serve_info"]
    assert info and dict(info[0][1])["model"] == "tiny" and len(dict(info[0][1])["index_fingerprint"]) == 12


def test_reasoning_runs_on_its_own_deployment(served):
    """Documents of a model that reasons never reach the ingress's model process: its batch counter stays
    put, the request shows up as kind=reasoning with op=reason batches, and more inputs than the cap are
    refused."""
    headers = {"Authorization": f"Bearer {served.key}"}
    documents = [{"image": data_url(p["image"]), "text": p["title"]} for p in served.products[:3]]
    health = httpx.get(f"{served.tiny_url}/healthz", timeout=60).json()["batching"]
    before = samples(served.tiny_url)
    r = httpx.post(f"{served.tiny_url}/v1/embeddings", json={"model": "tiny", "input": documents[:2],
                                                              "input_type": "document"}, headers=headers, timeout=120)
    assert r.status_code == 200, r.text
    assert all(isinstance(row["reasoning"], str) for row in r.json()["data"])
    assert httpx.get(f"{served.tiny_url}/healthz", timeout=60).json()["batching"] == health
    after = samples(served.tiny_url)
    assert value(after, "moon_serve_requests_total", route="/v1/embeddings", kind="reasoning", status="200") - \
        value(before, "moon_serve_requests_total", route="/v1/embeddings", kind="reasoning", status="200") == 1
    assert value(after, "moon_serve_model_batch_size_count", op="reason") > \
        value(before, "moon_serve_model_batch_size_count", op="reason")
    many = {"model": "tiny", "input": documents, "input_type": "document"}  # serve.reasoning_max_inputs=2
    r = httpx.post(f"{served.tiny_url}/v1/embeddings", json=many, headers=headers, timeout=60)
    assert r.status_code == 400 and "serve.reasoning_max_inputs" in r.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_need_no_token(served, path):
    assert httpx.get(f"{served.url}{path}", timeout=60).status_code == 200
