"""Shared fixtures: paths to the real catalog, a local Ray with explicit CPUs, small catalog slices."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "fashion-products"
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "styles.csv").exists():
        pytest.fail(f"the shared catalog is missing at {SHARED_DATA} (CI keeps ../shared beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session: 2 CPUs, no progress bars."""
    from moon_ray.config import RayConfig
    from moon_ray.infrastructure.runtime import init_ray

    ray = init_ray(RayConfig(num_cpus=2, progress=False))
    yield ray
    ray.shutdown()


def real_overrides(shared: Path, out: Path, limit: int) -> list[str]:
    return [
        f"data.catalog={shared / 'styles.csv'}",
        f"data.image_dir={shared / 'images'}",
        f"data.output_dir={out}",
        f"data.limit={limit}",
        "ray.progress=false",
    ]


@pytest.fixture(scope="session")
def real_slice(tmp_path_factory, shared_data, ray_local) -> Path:
    """The first 400 products of the shared catalog, preprocessed once per session."""
    from moon_ray.catalog.ingest import run_preprocess
    from moon_ray.config import load_config

    out = tmp_path_factory.mktemp("real-slice")
    run_preprocess(load_config(None, real_overrides(shared_data, out, 400)))
    return out
