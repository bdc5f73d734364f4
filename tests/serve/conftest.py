"""One Serve instance for the whole package: two applications on a free loopback port.

- "frozen" at /: the frozen baseline (real weights) over the first 100 products of the real slice,
  with a token and small limits, so the malformed suite can hit every limit cheaply.
- "tiny" at /tiny: a tiny exported MOON model (built here in seconds), whose catalog index is saved
  beforehand and loaded through serve.index_dir; it has an LM, so reasoning works.

Both replicas take 0.5 CPU of the session's 2-CPU local Ray; Serve is shut down at the end.
"""

from __future__ import annotations

import base64
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

KEY = "test-key-123"
LIMITS = ["serve.max_body_bytes=2000000", "serve.max_inputs=8", "serve.max_text_chars=300",
          "serve.max_image_pixels=1000000", "serve.max_top_k=20"]
TINY = ["model.lm.tiny=true", "model.vision.name=tiny", "model.vision.pretrained=false", "model.embed_dim=32",
        "model.matryoshka=[16,32]"]


@dataclass
class Served:
    url: str  # the frozen app
    tiny_url: str  # the tiny MOON app
    key: str
    export: Path
    products: list[dict]  # the first products of the indexed slice, catalog order (with image bytes)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_url(image: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(image).decode()


@pytest.fixture(scope="package")
def tiny_export(tmp_path_factory) -> Path:
    import torch

    from moon_ray.config import load_config
    from moon_ray.models.export import export_model
    from moon_ray.train.checkpoint import save_checkpoint
    from moon_ray.train.worker import build_training

    root = tmp_path_factory.mktemp("models") / "tiny"  # served as "tiny": an export is named by its parent
    cfg = load_config(None, TINY)
    model, temp, opt, sched = build_training(cfg, torch.device("cpu"))
    save_checkpoint(root / "step-000001", model, temp, opt, sched, 1, cfg)
    return export_model(root / "step-000001", root / "export")


def first_products(catalog: Path, n: int) -> list[dict]:
    import pyarrow.dataset as ds

    table = ds.dataset(catalog / "products", format="parquet").to_table().sort_by("row")
    return table.slice(0, n).to_pylist()


@pytest.fixture(scope="package")
def served(ray_local, real_slice, tiny_export, tmp_path_factory):
    from ray import serve

    from moon_ray.serve.app import build_app, config_from_args, load_encoder, model_key
    from moon_ray.serve.search import CatalogIndex

    common = [f"data.output_dir={real_slice}", "serve.cpus_per_replica=0.5", f"serve.api_key={KEY}", *LIMITS]
    tiny = [*common, f"serve.model={tiny_export}", "serve.index_limit=20", "serve.reasoning_max_tokens=8"]
    index_dir = tmp_path_factory.mktemp("tiny-index") / "index"
    tiny_cfg = config_from_args({"overrides": tiny})
    CatalogIndex.build(tiny_cfg, load_encoder(tiny_cfg), model_key(tiny_cfg)).save(index_dir)

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run_many([
            serve.RunTarget(build_app({"overrides": [*common, "serve.index_limit=100"]}), name="frozen",
                            route_prefix="/"),
            serve.RunTarget(build_app({"overrides": [*tiny, f"serve.index_dir={index_dir}"]}), name="tiny",
                            route_prefix="/tiny"),
        ])
        base = f"http://127.0.0.1:{port}"
        yield Served(url=base, tiny_url=f"{base}/tiny", key=KEY, export=tiny_export,
                     products=first_products(real_slice, 100))
    finally:
        serve.shutdown()


@pytest.fixture
def http(served):
    import httpx

    with httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {served.key}"}, timeout=120) as c:
        yield c
