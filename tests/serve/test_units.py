"""The pure pieces, without Serve: validation, output encoding, config plumbing, the Serve config file."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml

from moon_ray.config import ConfigError
from moon_ray.serve.errors import ApiError
from moon_ray.serve.schemas import InputItem
from moon_ray.serve.validation import (
    Limits,
    check_dimensions,
    count_tokens,
    decode_image,
    decode_vector,
    encode_vector,
    to_items,
    truncate,
)

ROOT = Path(__file__).resolve().parents[2]


def test_truncate_matches_hand_derived_values():
    vecs = np.array([[0.6, 0.0, 0.8, 0.0], [0.0, 0.3, 0.4, 0.866]], dtype=np.float32)
    out = truncate(vecs, 2)
    np.testing.assert_allclose(out, [[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(truncate(vecs, 3)[1], [0.0, 0.6, 0.8], atol=1e-6)
    assert truncate(vecs, None) is vecs


def test_base64_vector_is_little_endian_float32():
    vec = np.array([1.0, -2.5, 0.125], dtype=np.float32)
    text = encode_vector(vec, "base64")
    assert base64.b64decode(text) == struct.pack("<3f", 1.0, -2.5, 0.125)
    np.testing.assert_array_equal(decode_vector(text), vec)
    assert encode_vector(vec, "float") == [1.0, -2.5, 0.125]


def test_dimensions_rules():
    assert check_dimensions(None, 32, (16, 32), "m") is None
    assert check_dimensions(32, 32, (16, 32), "m") is None
    assert check_dimensions(16, 32, (16, 32), "m") == 16
    with pytest.raises(ApiError, match="larger than the 32"):
        check_dimensions(64, 32, (16, 32), "m")
    with pytest.raises(ApiError, match="not allowed.*16, 32"):
        check_dimensions(8, 32, (16, 32), "m")
    with pytest.raises(ApiError, match="only its full 32 dimensions"):
        check_dimensions(16, 32, (32,), "m")


def test_images_as_base64_or_data_url(tmp_path):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(buf, format="PNG")
    raw = buf.getvalue()
    text = base64.b64encode(raw).decode()
    assert decode_image(text, 10_000) == raw
    assert decode_image("data:image/png;base64," + text[:10] + "\n" + text[10:], 10_000) == raw
    with pytest.raises(ApiError, match="40x30 = 1200 pixels"):
        decode_image(text, 1199)


def test_items_limits_and_kinds():
    limits = Limits(max_inputs=2, max_text_chars=5, max_image_pixels=100)
    items = to_items([InputItem(text="hello")], limits)
    assert items[0].kind == "text" and items[0].image is None
    with pytest.raises(ApiError, match="too many inputs: 3"):
        to_items([InputItem(text="a")] * 3, limits)
    with pytest.raises(ApiError, match="input\\[1\\].text is 6 characters") as e:
        to_items([InputItem(text="a"), InputItem(text="abcdef")], limits)
    assert (e.value.status, e.value.param) == (400, "input[1].text")


def test_token_counts():
    assert count_tokens(None, ["two words", "", "three more words"]) == 5

    class Chars:  # a stand-in tokenizer: one token per character
        def __call__(self, texts, add_special_tokens):
            assert add_special_tokens is False
            return {"input_ids": [list(t) for t in texts]}

    assert count_tokens(Chars(), ["abc", "de"]) == 5


def test_builder_args_become_config(tmp_path):
    from moon_ray.serve.app import config_from_args, deployment_options

    cfg = config_from_args({"config": "pipelines/configs/default.yaml", "serve": {"port": 8123},
                            "serve.max_inputs": "7", "overrides": ["serve.autoscaling=true", "ray.use_custom_resources=true"]})
    assert (cfg.serve.port, cfg.serve.max_inputs, cfg.serve.autoscaling) == (8123, 7, True)
    assert Path(cfg.data.output_dir).is_absolute()
    opts = deployment_options(cfg)
    assert opts["ray_actor_options"] == {"num_cpus": 1.0, "resources": {"moon_serve": 1.0}}
    assert opts["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8.0}
    assert opts["max_ongoing_requests"] >= cfg.serve.max_batch_size
    with pytest.raises(ConfigError, match="serve.max_inputs must be >= 1"):
        config_from_args({"overrides": "serve.max_inputs=0"})


def test_serve_config_file_is_a_valid_serve_config():
    from ray.serve.schema import ServeDeploySchema

    path = ROOT / "pipelines/configs/serve.yaml"
    assert path.read_text().startswith("# serve run pipelines/configs/serve.yaml")
    schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    app = schema.applications[0]
    assert app.import_path == "moon_ray.serve.app:build_app" and schema.http_options.host == "127.0.0.1"
    from moon_ray.serve.app import config_from_args

    assert config_from_args(app.args).serve.model == "frozen"
    manifest = yaml.safe_load((ROOT / "cluster/kuberay-rayservice.yaml").read_text())
    service = yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"][0]
    assert service["import_path"] == app.import_path
    assert config_from_args(service["args"]).ray.use_custom_resources


def test_model_worker_restarts_after_its_process_dies(monkeypatch):
    import os
    import signal

    from moon_ray.serve import worker as W

    w = W.ModelWorker({"model": "random", "device": "cpu", "threads": 1, "batch_size": 8, "nice": 0, "engine": "hf"})
    try:
        assert w.info == {"name": "random", "dim": 256, "dimensions": [256], "can_reason": False, "reasons": False}
        vecs, tokens = w.call("encode", [None, None], ["two words", "one"])
        assert vecs.shape == (2, 256) and tokens == [2, 1]
        with pytest.raises(ValueError, match="neither an image nor a text"):
            w.call("encode", [None], [None])
        first = w.proc.pid
        w.proc.kill()
        w.proc.wait()
        again, _ = w.call("encode", [None, None], ["two words", "one"])  # a new process answers
        np.testing.assert_array_equal(again, vecs)
        assert w.proc.pid != first
        monkeypatch.setattr(W, "CALL_TIMEOUT_S", 1.0)
        os.kill(w.proc.pid, signal.SIGSTOP)  # hung: the call times out, the process is replaced
        with pytest.raises(W.WorkerDied, match="restarted for the next request"):
            w.call("encode", [None], ["x"])
        assert w.call("encode", [None], ["x"])[0].shape == (1, 256)
    finally:
        w.close()


class SlowEncoder:
    """A stand-in for the model process: 0.3 s per call, a row [len(text), 0, 0, 0] per text, and a
    ValueError for a batch holding the text "bad" (as the real process answers an input it cannot embed)."""

    info = {"name": "slow", "dim": 4, "dimensions": [4], "can_reason": False}

    def __init__(self):
        self.calls: list[list[str]] = []

    def call(self, op, images, texts):
        import time

        self.calls.append(list(texts))
        time.sleep(0.3)
        if "bad" in texts:
            raise ValueError("cannot embed 'bad'")
        return np.array([[len(t), 0, 0, 0] for t in texts], np.float32), [1] * len(texts)

    def close(self):
        pass


def test_engine_coalesces_items_that_wait_behind_a_busy_model(monkeypatch):
    """Requests arriving while a model call runs go together into the next call (serve.batch alone would
    queue them as separate small batches); each request gets its own rows; a bad item fails only its request."""
    import asyncio
    from types import SimpleNamespace

    from ray import serve

    from moon_ray.config import load_config
    from moon_ray.serve.engine import Engine
    from moon_ray.serve.errors import ApiError
    from moon_ray.serve.validation import Item

    replica = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=128))
    monkeypatch.setattr(serve, "get_replica_context", lambda: replica)  # serve.batch outside a replica
    model = SlowEncoder()

    async def scenario():
        engine = Engine(model, load_config(None, []).serve, {"slow"})

        async def request(text: str, delay: float):
            await asyncio.sleep(delay)
            return await engine.embed([Item(image=None, text=text)])

        texts = ["x" * n for n in range(1, 10)]
        later = [request(t, 0.03 + 0.01 * i) for i, t in enumerate(texts[1:])]  # after the 10 ms batch window
        got = await asyncio.gather(request(texts[0], 0), *later, request("bad", 0.06),
                                   return_exceptions=True)
        return engine.batching(), got, texts

    batching, got, texts = asyncio.run(scenario())
    for text, (vecs, tokens) in zip(texts, got[:-1], strict=True):
        assert vecs.tolist() == [[len(text), 0, 0, 0]] and tokens == [1]
    assert isinstance(got[-1], ApiError) and got[-1].status == 400 and "cannot embed 'bad'" in str(got[-1])
    assert model.calls[0] == ["x"]  # alone: nothing else waited
    assert sorted(model.calls[1], key=len) == sorted([*texts[1:], "bad"], key=len)  # all that came meanwhile
    assert batching == {"batches": 2, "items": 10, "mean_batch_size": 5.0}  # then one by one, for "bad"


def test_token_bucket_matches_hand_derived_waits():
    from moon_ray.serve.limits import RateLimiter

    clock = type("Clock", (), {"t": 100.0})()
    refused = []
    limiter = RateLimiter({"requests": (2.0, 2.0), "items": (4.0, 8.0)}, clock=lambda: clock.t,
                          on_refuse=lambda key, kind: refused.append((key, kind)))
    limiter.check("a", "requests")
    limiter.check("a", "requests")  # the burst of 2 is spent
    with pytest.raises(ApiError) as e:
        limiter.check("a", "requests")
    assert e.value.status == 429 and e.value.headers == {"Retry-After": "1", "retry-after-ms": "500"}
    limiter.check("b", "requests")  # another key has its own bucket
    clock.t += 0.25  # 0.5 token back: still short by 0.5 -> 0.25 s
    with pytest.raises(ApiError, match="retry in 0.25 s"):
        limiter.check("a", "requests")
    clock.t += 0.25
    limiter.check("a", "requests")
    limiter.check("a", "items", 8)
    with pytest.raises(ApiError) as e:
        limiter.check("a", "items", 6)  # 6 / 4 per s = 1.5 s -> Retry-After rounds up to 2
    assert e.value.headers == {"Retry-After": "2", "retry-after-ms": "1500"}
    clock.t += 10.0  # refills to the burst, not beyond
    limiter.check("a", "items", 8)
    with pytest.raises(ApiError):
        limiter.check("a", "items", 1)
    assert refused == [("a", "requests"), ("a", "requests"), ("a", "items"), ("a", "items")]


def test_rate_limit_config_defaults_and_checks():
    from moon_ray.config import load_config
    from moon_ray.serve.limits import RateLimiter

    assert RateLimiter.of(load_config(None, []).serve) is None  # off by default
    scfg = load_config(None, ["serve.rate_limit_requests_per_s=2.5", "serve.rate_limit_items_per_s=10",
                              "serve.max_inputs=16"]).serve
    assert RateLimiter.of(scfg).limits == {"requests": (2.5, 3.0), "items": (10.0, 16.0)}
    with pytest.raises(ConfigError, match="below serve.max_inputs"):
        load_config(None, ["serve.rate_limit_items_per_s=10", "serve.rate_limit_item_burst=8"])
    with pytest.raises(ConfigError, match="serve.auth"):
        load_config(None, ["serve.auth=closed"])


def test_api_keys_are_named_and_compared_in_full():
    from moon_ray.serve.errors import BearerAuth, parse_keys

    keys = parse_keys(" team-a:k1 , k2 ")
    assert keys["k1"] == "team-a" and keys["k2"].startswith("key-") and len(keys["k2"]) == 12
    auth = BearerAuth(None, keys)
    assert auth.identify(b"k1") == "team-a" and auth.identify(b"k2") == keys["k2"]
    assert auth.identify(b"k") is None and auth.identify(b"k1x") is None
    with pytest.raises(ValueError, match="empty"):
        parse_keys("team-a:")


def test_auth_required_refuses_to_build_without_a_key(monkeypatch):
    from moon_ray.serve.app import ENV_KEY, api_keys, config_from_args

    monkeypatch.delenv(ENV_KEY, raising=False)
    required = config_from_args({"overrides": ["serve.auth=required"]})
    with pytest.raises(ConfigError, match="needs an API key.*serve.auth=open"):
        api_keys(required, None)
    assert api_keys(required, "ops:s3cret") == {"s3cret": "ops"}
    public = config_from_args({"overrides": ["serve.host=0.0.0.0"]})  # auto: a public address needs a key
    with pytest.raises(ConfigError, match="host 0.0.0.0"):
        api_keys(public, None)
    assert api_keys(config_from_args({"overrides": ["serve.host=0.0.0.0", "serve.auth=open"]}), None) == {}
    assert api_keys(config_from_args({}), None) == {}  # loopback, auto: open


def test_reasoner_capacity_and_timeout_become_503_and_504(monkeypatch):
    """The ingress never waits on a full reasoner: its back-pressure is a 503 with Retry-After at once, and
    a reasoner that does not answer in serve.reasoning_timeout_s is a 504."""
    import asyncio

    from ray.serve.exceptions import BackPressureError

    from moon_ray.config import load_config
    from moon_ray.serve.engine import Engine
    from moon_ray.serve.validation import Item

    class Response:
        def __init__(self, outcome):
            self.outcome, self.cancelled = outcome, False

        def __await__(self):
            if self.outcome == "full":
                raise BackPressureError(num_queued_requests=16, max_queued_requests=16)
            yield from asyncio.sleep(30).__await__()

        def cancel(self):
            self.cancelled = True

    class Handle:
        def __init__(self, outcome):
            self.outcome, self.responses = outcome, []

        def remote(self, items):
            self.responses.append(Response(self.outcome))
            return self.responses[-1]

    from types import SimpleNamespace

    from ray import serve

    replica = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=128))
    monkeypatch.setattr(serve, "get_replica_context", lambda: replica)  # serve.batch outside a replica
    model = SlowEncoder()
    model.info = dict(model.info, can_reason=True, reasons=True)
    scfg = load_config(None, ["serve.reasoning_timeout_s=0.2", "serve.reasoning_max_inputs=2"]).serve

    async def scenario(outcome):
        engine = Engine(model, scfg, set(), reasoner=Handle(outcome))
        with pytest.raises(ApiError) as e:
            await engine.embed_documents([Item(b"jpeg", "x")])
        with pytest.raises(ApiError, match="at most 2 per request"):
            await engine.embed_documents([Item(b"jpeg", "x")] * 3)
        return e.value, engine

    full, _ = asyncio.run(scenario("full"))
    assert (full.status, full.code, full.headers) == (503, "reasoning_busy", {"Retry-After": "1"})
    slow, engine = asyncio.run(scenario("slow"))
    assert (slow.status, slow.code) == (504, "reasoning_timeout")
    assert engine.reasoner.responses[0].cancelled and engine.reasoning_inflight == 0
    assert model.calls == []  # the embedding model process was never asked


@pytest.mark.parametrize("engine", ["torch", "vllm"])
def test_documents_from_a_rollout_engine_equal_the_index_path(tiny_export, real_slice, engine):
    """serve.reasoning_engine: a rollout engine over the export's merged LM writes each document's greedy
    trace (eval/traces_job.PolicyEngine); the document is then embedded exactly as the index embeds it.
    The torch engine's traces are the LM's own greedy ones; vLLM's are at least embedded consistently."""
    if engine == "vllm":
        pytest.importorskip("vllm")
    from moon_ray.eval.index_artifact import embed_products
    from moon_ray.eval.traces_job import PolicyEngine
    from moon_ray.models.encoder import get_encoder
    from moon_ray.serve.worker import documents
    from tests.serve.conftest import first_products

    encoder = get_encoder(str(tiny_export))
    products = first_products(real_slice, 3)
    images, titles = [p["image"] for p in products], [p["title"] for p in products]
    vecs, traces, title_tokens, trace_tokens = documents(encoder, images, titles, PolicyEngine(encoder, engine, 1))
    again, used = embed_products(encoder, images, titles, traces)
    assert used == traces and all(isinstance(t, str) for t in traces) and len(trace_tokens) == 3
    np.testing.assert_allclose(vecs, again, atol=1e-6)
    if engine == "torch":
        hf_vecs, hf_traces, _, _ = documents(encoder, images, titles)
        assert traces == hf_traces
        np.testing.assert_allclose(vecs, hf_vecs, atol=1e-5)
