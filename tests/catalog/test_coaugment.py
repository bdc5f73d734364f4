"""Issue 20 item 4: visual expansions on real catalog shots, the enriched-title gate, and the
`moon-ray coaugment` job on 8 real products with the tiny LM (columns, version, the model's own titles).

    .venv/bin/python -m pytest -q tests/catalog/test_coaugment.py
"""

from __future__ import annotations

import random

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFilter

from moon_ray.catalog import expansions as X
from moon_ray.catalog.coaugment import enriched_title
from moon_ray.catalog.images import open_rgb, process
from moon_ray.config import ConfigError, ImageConfig, load_config
from tests.conftest import SHARED_DATA

SHOTS = ("10000", "10001", "10002", "10003", "10004", "10005")  # real catalog shots, products on white
TINY = ["model.lm.tiny=true", "model.vision.name=tiny", "model.vision.pretrained=false", "model.embed_dim=32",
        "model.matryoshka=[16,32]", "model.fusion_heads=4", "rollout.num_workers=1", "rollout.cpus_per_worker=0.5",
        "rollout.threads=1", "ray.progress=false"]


@pytest.fixture(scope="module")
def shots() -> list[Image.Image]:
    out = []
    for name in SHOTS:
        data = (SHARED_DATA / "images" / f"{name}.jpg").read_bytes()
        out.append(open_rgb(process(data, ImageConfig())["image"]))
    return out


def test_subject_mask_is_the_product_not_the_white_border(shots):
    for img in shots:
        mask = X.subject_mask(img)
        left, top, right, bottom = X.subject_box(mask)
        assert 0 < mask.mean() < 0.95 and right - left > 20 and bottom - top > 20
        px = np.asarray(img)
        assert (px[~mask] > X.WHITE_LEVEL).all()  # all background is near-white ...
        assert mask[top:bottom, left:right].any() and not mask[:, :left].any() and not mask[:, right:].any()
    ring = np.full((64, 64, 3), 255, np.uint8)  # ... but white enclosed by the product stays product
    ring[16:48, 16:48] = 20
    ring[24:40, 24:40] = 255
    mask = X.subject_mask(Image.fromarray(ring))
    assert mask[24:40, 24:40].all() and not mask[:16].any() and X.subject_box(mask) == (16, 16, 48, 48)
    assert X.subject_mask(Image.new("RGB", (32, 32), (90, 60, 30))).all()  # a photo: no background


@pytest.mark.parametrize("size", [224, 96])
def test_every_expansion_has_the_size_and_differs_from_the_shot(shots, size):
    for i, img in enumerate(shots):
        base = img.resize((size, size))
        for kind in X.KINDS:
            out = X.expand(img, kind, random.Random(i), size)
            assert out.size == (size, size) and out.mode == "RGB"
            assert np.abs(np.asarray(out, np.int16) - np.asarray(base, np.int16)).mean() > 1.0, (SHOTS[i], kind)
    with pytest.raises(ValueError, match="unknown expansion 'logo'"):
        X.expand(shots[0], "logo", random.Random(0))


def test_background_changes_outside_the_mask_and_keeps_the_subject(shots):
    for i, img in enumerate(shots):
        mask = X.subject_mask(img)
        out = np.asarray(X.new_background(img, random.Random(i), img.width), np.int16)
        src = np.asarray(img, np.int16)
        assert (out[mask] == src[mask]).all()  # the product keeps its pixels
        grown = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(5))
        far = ~np.asarray(grown).astype(bool)  # background away from the feathered edge
        changed = np.abs(out[far] - src[far]).max(axis=1) > 12
        assert changed.mean() > 0.9, (SHOTS[i], changed.mean())
    canvases = [X.background_canvas(40, 30, random.Random(s)) for s in range(30)]
    assert all(c.shape == (30, 40, 3) for c in canvases)
    plain = [float(c.std(axis=(0, 1)).max()) == 0.0 for c in canvases]
    assert any(plain) and not all(plain)  # plain ones and patterned ones (gradient, noise, stripes)


def test_subject_and_detail_crop_to_the_product(shots):
    for i, img in enumerate(shots):
        mask = X.subject_mask(img)
        box, size = X.subject_box(mask), img.width
        left, top, right, bottom = X.subject_box(X.subject_mask(X.main_subject(img, random.Random(i), size)))
        # the tight crop: centred, its longer side 80-93 % of the view (a 4-10 % margin each side)
        assert 0.8 * size <= max(right - left, bottom - top) <= 0.93 * size, (SHOTS[i], left, top, right, bottom)
        assert abs(left - (size - right)) <= 4 and abs(top - (size - bottom)) <= 4, SHOTS[i]
        for seed in range(20):
            x0, y0, x1, y1 = X.detail_window(box, random.Random(seed))
            short = min(box[2] - box[0], box[3] - box[1])
            assert box[0] <= x0 and box[1] <= y0 and x1 <= box[2] and y1 <= box[3]
            assert x1 - x0 == y1 - y0 and 0.35 * short - 1 <= x1 - x0 <= 0.6 * short


def test_perspective_coefficients_map_the_corners():
    src = [(0.0, 0.0), (100.0, 0.0), (100.0, 100.0), (0.0, 100.0)]
    assert np.allclose(X.perspective_coeffs(src, src), [1, 0, 0, 0, 1, 0, 0, 0], atol=1e-9)
    dst = [(5.0, -3.0), (96.0, 4.0), (103.0, 98.0), (-2.0, 101.0)]
    a, b, c, d, e, f, g, h = X.perspective_coeffs(src, dst)
    for (x, y), (u, v) in zip(dst, src, strict=True):  # PIL maps an output point (x, y) to input (u, v)
        w = g * x + h * y + 1
        assert np.allclose(((a * x + b * y + c) / w, (d * x + e * y + f) / w), (u, v), atol=1e-6)


@pytest.mark.parametrize("continuation, expected", [
    ("slim fit cotton, casual wear.\nNext line", "Nike Men Navy Shirt, slim fit cotton, casual wear"),
    ("made of soft leather. Great for summer", "Nike Men Navy Shirt, made of soft leather"),
    ("", None), ("navy shirt", None), ("Nike Men Navy Shirt", None),  # nothing added
    ("2022, 2023, 2024", None), ("its material", None), ("Material: Nike Men", None),  # numbers, the prompt
    ("100% cotton, 100% Nike", None), ("hand-made, hand-painted, hand", None),  # repetition
    ("soft cotton and linen and silk", "Nike Men Navy Shirt, soft cotton and linen and silk"),  # "and" twice is fine
    (" ".join(f"w{i}" for i in range(20)), None),  # too long
])
def test_enriched_title_gate(continuation, expected):
    assert enriched_title("Nike Men Navy Shirt", continuation) == expected


@pytest.fixture
def catalog(real_slice, tmp_path):
    """12 train products of the real slice in two shards (the job rewrites each)."""
    table = pq.read_table(real_slice / "products").sort_by("row")
    table = table.filter(np.array(table.column("split").to_pylist()) == "train").slice(0, 12)
    (tmp_path / "products").mkdir()
    pq.write_table(table.slice(0, 7), tmp_path / "products" / "part-0.parquet")
    pq.write_table(table.slice(7), tmp_path / "products" / "part-1.parquet")
    return tmp_path


def test_job_stores_the_models_titles_with_version_and_the_expansions(ray_local, catalog):
    from moon_ray.catalog.coaugment import (
        CoaugmentJob,
        enrich_titles,
        load_model,
        model_version,
        run_coaugment,
    )

    cfg = load_config(None, [*TINY, f"data.output_dir={catalog}"])
    job = CoaugmentJob(limit=8, title_limit=6, views=2, max_tokens=6, batch_size=3)
    out = run_coaugment(cfg, job)
    version = model_version(cfg, None, 6, True)
    assert (out["products"], out["titles"], out["expanded"], out["written"], out["title_version"]) == (8, 6, 8, 8, version)
    table = pq.read_table(catalog / "products").sort_by("row")
    assert table.num_rows == 12
    titles = table.column("enriched_title").to_pylist()
    assert table.column("enriched_title_version").to_pylist() == [version] * 6 + [None] * 6
    model = load_model(cfg, None)
    images, originals = table.column("image").to_pylist(), table.column("title").to_pylist()
    for rows in ([0, 1, 2], [3, 4, 5]):  # the job's batches of 3: the model's own greedy titles
        assert [titles[i] for i in rows] == enrich_titles(model, [images[i] for i in rows],
                                                          [originals[i] for i in rows], 6, True)
    assert titles[6:] == [None] * 6 and out["titles_usable"] == sum(t is not None for t in titles)
    kinds = table.column("expansion_kinds").to_pylist()
    assert kinds == [["subject", "background"]] * 8 + [None] * 4
    for views in table.column("expansions").to_pylist()[:8]:
        assert [open_rgb(v).size for v in views] == [(224, 224)] * 2
    assert model_version(cfg, None, 7, True) != version != model_version(cfg, None, 6, False)
    with pytest.raises(ConfigError, match="--views"):
        run_coaugment(cfg, CoaugmentJob(views=-1))
