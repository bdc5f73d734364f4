"""The degradation, the FAISS indexes and the baseline encoders."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from moon_ray.eval.degrade import degrade
from moon_ray.eval.metrics import top_k
from moon_ray.infrastructure.index import build_index, search
from moon_ray.models.baselines import IMAGE_DIM, RandomEncoder
from moon_ray.models.encoder import get_encoder, registered


def product_image(colour=(20, 40, 160), accent=(240, 200, 20), size=224) -> bytes:
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.rectangle((50, 30, 170, 200), fill=colour)
    draw.ellipse((90, 60, 130, 100), fill=accent)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)


# ------------------------------------------------------------------------------------- degradation
def test_degradation_is_deterministic_and_changes_the_image():
    src = product_image()
    a, b = degrade(src, 0, "1234"), degrade(src, 0, "1234")
    assert a == b
    assert degrade(src, 0, "1235") != a and degrade(src, 1, "1234") != a
    out, orig = pixels(a), pixels(src)
    assert out.shape == orig.shape  # same size as the input
    assert np.abs(out - orig).mean() > 10  # a real change, not a re-encode


def test_degradation_changes_no_colour():
    # a grey image stays grey: crop/rotate/blur/resize/JPEG never shift hue
    grey = product_image(colour=(90, 90, 90), accent=(30, 30, 30))
    out = pixels(degrade(grey, 0, "7"))
    assert np.abs(out - out.mean(axis=2, keepdims=True)).max() < 12


# ------------------------------------------------------------------------------------------- index
def test_flat_is_exact_and_hnsw_close():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((600, 32)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries = base[:50] + 0.1 * rng.standard_normal((50, 32)).astype(np.float32)
    exact = top_k(queries @ base.T, 10)
    scores, ids = search(build_index(base, "flat"), queries, 10)
    assert (ids == exact).all()
    np.testing.assert_allclose(scores[:, 0], (queries @ base.T).max(axis=1), rtol=1e-5)
    _, approx = search(build_index(base, "hnsw", m=16, ef_construction=100, ef_search=64), queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.95


def test_index_pads_and_rejects_bad_input():
    base = np.eye(3, dtype=np.float32)
    _, ids = search(build_index(base, "flat"), base[:1], 5)
    assert ids[0, 0] == 0 and sorted(ids[0, :3].tolist()) == [0, 1, 2]
    assert (ids[0, 3:] == -1).all()
    with pytest.raises(ValueError, match="unknown index kind 'ivf'"):
        build_index(base, "ivf")
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        build_index(np.zeros(3, np.float32))


# --------------------------------------------------------------------------------------- baselines
def test_baselines_are_registered():
    assert {"frozen", "random"} <= set(registered())
    assert isinstance(get_encoder("random"), RandomEncoder)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        get_encoder("nope")


def test_random_encoder_is_deterministic_per_input():
    enc = RandomEncoder(dim=64)
    img = product_image()
    v = enc.encode([img, None, img, img], ["a shirt", "a shirt", None, "a shirt"])
    assert v.shape == (4, 64) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    again = enc.encode([img], ["a shirt"])
    np.testing.assert_array_equal(v[0], again[0])
    assert abs(v[0] @ v[1]) < 0.5 and abs(v[0] @ v[2]) < 0.5  # different inputs, unrelated vectors
    with pytest.raises(ValueError, match="neither an image nor a text"):
        enc.encode([None], [None])


@pytest.fixture(scope="module")
def frozen():
    return get_encoder("frozen")


def test_frozen_blocks_and_combination(frozen):
    img = product_image()
    v = frozen.encode([img, None, img], [None, "Men Navy Blue Shirts", "Men Navy Blue Shirts"])
    assert v.shape == (3, IMAGE_DIM + 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    assert np.all(v[0, IMAGE_DIM:] == 0) and np.all(v[1, :IMAGE_DIM] == 0)
    np.testing.assert_allclose(v[2], (v[0] + v[1]) / np.sqrt(2), atol=1e-6)  # [i ; t] / √2


def test_frozen_text_similarity_is_semantic(frozen):
    q, near, far = frozen.encode([None] * 3, ["Men Navy Blue Shirts", "Navy blue shirt for men", "Black wrist watch"])
    assert q @ near > q @ far + 0.2
    blue, red = product_image((20, 40, 160)), product_image((200, 30, 30))
    a, b, c = frozen.encode([blue, degrade(blue, 0, "x"), red], [None] * 3)
    assert a @ b > 0.5 and a @ c > 0.5  # the EfficientNet space: unit vectors, high cosine for similar shapes


def test_model_slug_names_exports_after_their_run(tmp_path):
    from moon_ray.eval.report import model_slug

    for run in ("joint", "contrastive"):
        (tmp_path / run / "export").mkdir(parents=True)
    assert model_slug("frozen") == "frozen"
    assert model_slug(str(tmp_path / "joint" / "export")) == "joint"
    assert model_slug(str(tmp_path / "contrastive" / "export")) == "contrastive"
    assert model_slug(str(tmp_path / "joint")) == "joint"
