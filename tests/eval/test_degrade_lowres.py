"""Low-resolution evaluation: the 60×80 thumbnail, its requests, and the `*_lowres` scores computed
against an index of low-res products (hand-checked on toy vectors)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from moon_ray.eval import kagl
from moon_ray.eval.data import EvalSet, build_requests
from moon_ray.eval.degrade import SHOP_SIZE, degrade, low_res, low_res_key
from moon_ray.eval.embed import embed_batch
from moon_ray.eval.evaluate import score, with_low_res_products
from moon_ray.infrastructure.index import build_index


def jpeg(size=(224, 224), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def toy_set(n: int) -> EvalSet:
    products = {"id": [f"p{i}" for i in range(n)], "title": [f"title {i}" for i in range(n)],
                "image": [jpeg(seed=i) for i in range(n)]}
    for f in ("gender", "colour", "article_type", "season", "usage", "brand", "master_category", "sub_category"):
        products[f] = ["x"] * n
    return EvalSet(split="test", products=products, queries=["q0", "q1"], query_relevant=[[0], [1, 2]],
                   unseen_queries=["u0", "u1"])


def test_low_res_is_a_shop_thumbnail_and_the_key_selects_it():
    image = jpeg()
    small = Image.open(io.BytesIO(low_res(image)))
    assert small.size == SHOP_SIZE == (60, 80) and small.format == "JPEG"
    assert degrade(image, 0, low_res_key("p1")) == low_res(image)
    assert Image.open(io.BytesIO(degrade(image, 0, "p1"))).size == (224, 224)  # the hard degradation, unchanged


def test_low_res_products_join_the_requests():
    data = toy_set(4)
    table, parts = build_requests(data, ("gender",))
    out, low_parts = with_low_res_products(table, parts, data)
    s = low_parts["product_lowres"]
    assert s == slice(table.num_rows, table.num_rows + 4) and out.num_rows == s.stop
    assert out.column("row").to_pylist() == list(range(out.num_rows))
    rows = out.slice(s.start, 4).to_pylist()
    assert [r["degrade"] for r in rows] == [low_res_key(i) for i in data.products["id"]]
    assert all(r["product"] and r["text"] == t for r, t in zip(rows, data.products["title"], strict=True))


class SizeEncoder:
    """Records the image sizes it is given; a product's vector says which size it saw."""

    def __init__(self):
        self.sizes = []

    def encode(self, images, texts):
        return self.encode_products(images, texts)

    def encode_products(self, images, titles):
        sizes = [Image.open(io.BytesIO(b)).size if b else (0, 0) for b in images]
        self.sizes += sizes
        return np.array([[w, h] for w, h in sizes], dtype=np.float32)


def test_low_res_products_are_embedded_from_60x80_images():
    data = toy_set(3)
    table, parts = with_low_res_products(*build_requests(data, ()), data)
    vecs = embed_batch(SizeEncoder(), table, seed=0)
    assert vecs[parts["product_lowres"]].tolist() == [[60, 80]] * 3
    assert vecs[parts["product"]].tolist() == [[224, 224]] * 3


def test_low_res_tasks_are_scored_against_the_low_res_index():
    n = 4
    data = toy_set(n)
    e = np.eye(8, dtype=np.float32)
    full, shifted = e[:n], e[[1, 2, 3, 0]]  # the low-res index holds product i's vector at i+1 (mod n)
    vecs = {"product": full, "image_degraded": full, "image": full, "image_text": full,
            "text_query": full[:2], "text_unseen": full[:2], "product_lowres": shifted}
    index, low = build_index(full, "flat", use_gpu=False), build_index(shifted, "flat", use_gpu=False)
    m = score(data, vecs, index, low_res_index=low)["metrics"]
    assert m["image_same/R@1"] == 1.0 and m["image_text/R@1"] == 1.0
    # query i (= e_i) finds low-res row i-1 first: never its own product
    assert m["image_same_lowres/R@1"] == 0.0 and m["image_text_lowres/R@1"] == 0.0
    assert m["image_same_lowres/R@10"] == 1.0
    # text_unseen query 0 (e_0) ranks low-res row 3 first; query 1 (e_1) ranks row 0, not relevant to it
    assert m["text_unseen_lowres/hit@1"] == 0.0 and m["text_unseen/hit@1"] == 1.0
    assert "image_same_lowres/R@1" not in score(data, vecs, index)["metrics"]


def test_kagl_low_res_requests_scores_and_column():
    data = toy_set(3)
    table, images, text_row = kagl.build_kagl_requests(data, ["x"], low_res=True)
    assert images == {"image": slice(0, 3), "image_lowres": slice(3, 6)}
    keys = table.column("degrade").to_pylist()
    assert keys[:3] == [None] * 3 and keys[3:6] == [low_res_key(i) for i in data.products["id"]]
    assert all(k is None for k in keys[6:]) and set(text_row) == {"title 0", "title 1", "title 2", "x"}
    assert kagl.build_kagl_requests(data, ["x"])[1] == {"image": slice(0, 3)}
    e = np.eye(8, dtype=np.float32)
    text = {"title 0": e[0], "title 1": e[1], "title 2": e[2], "x": e[3]}
    queries = {t.name: kagl.kagl_queries(data, t, seed=0) for t in kagl.TASKS}
    results = kagl.score_kagl(data, queries, e[:3], text.__getitem__, n_boot=50)
    low = kagl.score_kagl(data, queries, e[[1, 2, 0]], text.__getitem__, n_boot=50)
    kagl.merge_low_res(results, low)
    assert results["metrics"]["text-to-image/R@1"] == 1.0
    assert results["metrics"]["text-to-image-lowres/R@1"] == 0.0
    assert results["counts"]["text-to-image-lowres"] == 3 and "text-to-image-lowres/MRR" in results["ci95"]
    md = kagl.kagl_markdown({**results, "model": "toy", "split": "test", "n_products": 3})
    assert "ours, 60×80 images" in md
    row = next(line for line in md.splitlines() if line.startswith("| text-to-image | 3 | R@1 |"))
    assert row.split(" | ")[3:7][0] == "1.000" and row.split(" | ")[5] == "0.000"

