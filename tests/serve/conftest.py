"""One Serve instance for the whole package: three applications on a free loopback port.

- "frozen" at /: the frozen baseline (real weights) over the first 100 products of the real slice,
  with a token and small limits, so the malformed suite can hit every limit cheaply. It has no
  prebuilt index, so its replica embeds them at start: the fallback path.
- "tiny" at /tiny: a tiny exported MOON model (built here in seconds), whose catalog index is built
  beforehand by the Ray Data job (`moon-ray index`) and loaded through serve.index_dir; it has an LM,
  so reasoning works, through its own MoonReasoner deployment.
- "limited" at /limited: the `random` encoder (no weights), search off, two named keys and per-key
  rate limits (2 requests/s, 4 items/s with a burst of 8), for the rate-limit, readiness and metrics tests.

The replicas take 0.5 (frozen, tiny) and 0.25 (reasoner, limited) CPU of the session's 2-CPU local
Ray; Serve is shut down at the end.
"""

from __future__ import annotations

import base64
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

KEY = "test-key-123"
LIMITED_KEYS = {"team-a": "key-aaa-111", "team-b": "key-bbb-222", "team-c": "key-ccc-333"}
LIMITED = ["serve.model=random", "serve.index_limit=0", "serve.cpus_per_replica=0.25", "serve.max_inputs=8",
           "serve.rate_limit_requests_per_s=2", "serve.rate_limit_items_per_s=4", "serve.rate_limit_item_burst=8",
           "serve.api_key=" + ",".join(f"{name}:{key}" for name, key in LIMITED_KEYS.items())]
LIMITS = ["serve.max_body_bytes=2000000", "serve.max_inputs=8", "serve.max_text_chars=300",
          "serve.max_image_pixels=1000000", "serve.max_top_k=20"]
TINY = ["model.lm.tiny=true", "model.vision.name=tiny", "model.vision.pretrained=false", "model.embed_dim=32",
        "model.matryoshka=[16,32]"]
REASONING = ["rollout.enabled=true", "rollout.max_tokens=4"]


@dataclass
class Served:
    url: str  # the frozen app
    tiny_url: str  # the tiny MOON app
    limited_url: str  # the rate-limited app (random encoder)
    key: str
    export: Path
    products: list[dict]  # the first products of the indexed slice, catalog order (with image bytes)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_url(image: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(image).decode()


def write_export(root: Path, *overrides: str, lora_noise: float = 0.0) -> Path:
    """A tiny MOON model (TINY plus `overrides`) exported to root/export after one checkpoint (no training).
    `lora_noise`: the std of LoRA B matrices drawn at random (seed 0) instead of zeros, so that the tiny
    LM's greedy traces are words rather than the blank lines its random base writes."""
    import torch

    from moon_ray.config import load_config
    from moon_ray.models.export import export_model
    from moon_ray.train.checkpoint import save_checkpoint
    from moon_ray.train.worker import build_training

    cfg = load_config(None, [*TINY, *overrides])
    model, temp, opt, sched = build_training(cfg, torch.device("cpu"))
    if lora_noise:
        torch.manual_seed(0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, lora_noise)
    save_checkpoint(root / "step-000001", model, temp, opt, sched, 1, cfg)
    return export_model(root / "step-000001", root / "export")


@pytest.fixture(scope="package")
def tiny_export(tmp_path_factory) -> Path:
    """Served as "tiny" (an export is named by its parent); trained 'jointly' (rollout.enabled), so it embeds
    products with a greedy trace of at most 4 tokens."""
    return write_export(tmp_path_factory.mktemp("models") / "tiny", *REASONING, lora_noise=0.3)


def first_products(catalog: Path, n: int) -> list[dict]:
    import pyarrow.dataset as ds

    table = ds.dataset(catalog / "products", format="parquet").to_table().sort_by("row")
    return table.slice(0, n).to_pylist()


@pytest.fixture(scope="package")
def tiny_index(ray_local, real_slice, tiny_export, tmp_path_factory) -> Path:
    """The tiny model's index over the first 20 products, built by the Ray Data job (`moon-ray index`)."""
    from moon_ray.eval.index_job import build_index_dir
    from moon_ray.serve.app import config_from_args

    out = tmp_path_factory.mktemp("tiny-index") / "index"
    cfg = config_from_args({"overrides": [f"data.output_dir={real_slice}", f"serve.model={tiny_export}",
                                          "serve.index_limit=20", "serve.index_actors=1",
                                          "serve.index_cpus_per_actor=0.5", "serve.index_batch_size=8"]})
    build_index_dir(cfg, out)
    return out


@pytest.fixture(scope="package")
def served(ray_local, real_slice, tiny_export, tiny_index):
    from ray import serve

    from moon_ray.serve.app import build_app

    common = [f"data.output_dir={real_slice}", "serve.cpus_per_replica=0.5", f"serve.api_key={KEY}", *LIMITS]
    tiny = [*common, f"serve.model={tiny_export}", "serve.reasoning_max_inputs=2",
            "serve.reasoning_cpus_per_replica=0.25", f"serve.index_dir={tiny_index}"]
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run_many([
            serve.RunTarget(build_app({"overrides": [*common, "serve.index_limit=100"]}), name="frozen",
                            route_prefix="/"),
            serve.RunTarget(build_app({"overrides": tiny}), name="tiny", route_prefix="/tiny"),
            serve.RunTarget(build_app({"overrides": [f"data.output_dir={real_slice}", *LIMITED]}), name="limited",
                            route_prefix="/limited"),
        ])
        base = f"http://127.0.0.1:{port}"
        yield Served(url=base, tiny_url=f"{base}/tiny", limited_url=f"{base}/limited", key=KEY, export=tiny_export,
                     products=first_products(real_slice, 100))
    finally:
        serve.shutdown()


@pytest.fixture
def http(served):
    import httpx

    with httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {served.key}"}, timeout=120) as c:
        yield c
