"""POST /v1/creative/select through the ingress's ASGI app (api.create_api) in this process: a real engine
(the `random` encoder's model process), a real creative selector (tiny, saved as `moon-ray creative train`
saves one) behind `CreativeService` (what the MoonCreative deployment runs; only the Ray hop is skipped).
Every bad field is a 400 in OpenAI's error shape naming it; without a selector the route is a 404 saying so.
The route through Ray Serve itself runs in tests/creative/test_grpo_end_to_end.py."""

from __future__ import annotations

import base64

import pytest

from moon_ray.config import load_config
from tests.creative.test_pieces import jpeg, product_shot
from tests.serve.conftest import data_url

TINY = ["model.vision.name=tiny", "model.vision.pretrained=false", "model.lm.tiny=true", "model.lm.lora.r=4"]
LIMITS = ["serve.model=random", "serve.index_limit=0", "serve.max_text_chars=40", "serve.max_image_pixels=20000",
          "serve.auth=open", "creative.max_answer_tokens=8"]


@pytest.fixture(scope="module")
def apps(tmp_path_factory):
    """(client with a creative selector, client without one)."""
    from starlette.testclient import TestClient

    from moon_ray.creative.sft import build_selector
    from moon_ray.serve.api import create_api
    from moon_ray.serve.creative import CreativeService
    from moon_ray.serve.engine import Engine
    from moon_ray.serve.worker import ModelWorker, model_spec

    selector_dir = tmp_path_factory.mktemp("creative") / "grpo"
    build_selector(load_config(None, TINY)).save(selector_dir, {"stage": "grpo", "seed": 0})
    cfg = load_config(None, [*TINY, *LIMITS, f"serve.creative_model={selector_dir}"])
    worker = ModelWorker(model_spec(cfg))
    try:
        engine = Engine(worker, cfg.serve, {"random"})
        service = CreativeService.of(cfg)
        with TestClient(create_api(engine, None, cfg.serve, {}, creative=service)) as with_creative, \
                TestClient(create_api(engine, None, cfg.serve, {})) as without:
            yield with_creative, without
    finally:
        worker.close()


def pair(**fields) -> dict:
    a, b = jpeg(product_shot(96)), jpeg(product_shot(64))
    return {"image_a": base64.b64encode(a).decode(), "image_b": data_url(b), "interest": "prefers casual wear"} | fields


def test_a_pair_gets_a_choice_or_an_honest_null_and_the_model(apps):
    client, _ = apps
    r = client.post("/v1/creative/select", json=pair())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "creative.selection" and body["model"] == "grpo"
    assert body["choice"] in ("A", "B", None) and isinstance(body["explanation"], str)
    assert body["well_formed"] == (body["choice"] is not None)  # an untrained tiny LM rarely keeps the format
    assert client.post("/v1/creative/select", json=pair(interest=None, model="grpo")).status_code == 200
    assert client.get("/healthz").json()["creative_model"] == "grpo"


@pytest.mark.parametrize("name, body, status, param, words", [
    ("missing image_b", {"image_a": "x"}, 400, "image_b", "image_b: Field required"),
    ("image_a empty", {"image_a": ""}, 400, "image_a", "at least 1 character"),
    ("image_a not base64", {"image_a": "not base64!!"}, 400, "image_a", "not valid base64"),
    ("image_b not an image", {"image_b": base64.b64encode(b"hello, not a picture").decode()}, 400, "image_b",
     "not an image"),
    ("image_b a text data url", {"image_b": "data:text/plain;base64,aGk="}, 400, "image_b", "not an image/* type"),
    ("image too large", {"image_a": base64.b64encode(jpeg(product_shot(224))).decode()}, 400, "image_a",
     "serve.max_image_pixels"),
    ("interest not a string", {"interest": 5}, 400, "interest", "interest"),
    ("interest too long", {"interest": "x" * 41}, 400, "interest", "serve.max_text_chars"),
    ("unknown field", {"temperature": 1}, 400, "temperature", "temperature: unknown field"),
    ("another model", {"model": "sft"}, 404, "model", "is not served here"),
])
def test_bad_fields_are_named(apps, name, body, status, param, words):
    client, _ = apps
    full = pair() | body if name != "missing image_b" else body
    r = client.post("/v1/creative/select", json=full)
    assert r.status_code == status, (name, r.text)
    err = r.json()["error"]
    assert param in (err["param"] or "") and words in err["message"], (name, err)


def test_without_a_selector_the_route_says_how_to_get_one(apps):
    _, client = apps
    r = client.post("/v1/creative/select", json=pair())
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "creative_not_configured" and "serve.creative_model" in err["message"]
    assert client.get("/healthz").json()["creative_model"] is None


def test_serve_refuses_a_creative_model_that_is_not_one(tmp_path):
    from moon_ray.config import ConfigError
    from moon_ray.serve.app import check_sources

    cfg = load_config(None, ["serve.model=random", "serve.index_limit=0", f"serve.creative_model={tmp_path}"])
    with pytest.raises(ConfigError, match="serve.creative_model: .* is not a creative selector"):
        check_sources(cfg)
