"""/v1/search on a real slice (frozen baseline, 100 products) and the catalog index on its own."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from moon_ray.config import ConfigError, load_config
from moon_ray.serve.search import CatalogIndex
from tests.serve.conftest import data_url


def test_a_product_is_found_from_its_own_image(http, served):
    # frozen: image query [i; 0] . product [i; t]/sqrt(2) = 1/sqrt(2) for the product itself, less for others
    for product in served.products[:3]:
        r = http.post("/v1/search", json={"image": data_url(product["image"]), "k": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        top = body["data"][0]
        assert (top["id"], top["rank"], top["object"]) == (product["id"], 1, "search_result")
        assert top["score"] == pytest.approx(1 / np.sqrt(2), abs=1e-4)
        assert (top["title"], top["gender"], top["article_type"]) == (product["title"], product["gender"],
                                                                       product["article_type"])
        assert body["query"]["kind"] == "image" and len(body["data"]) == 5
        assert [h["rank"] for h in body["data"]] == [1, 2, 3, 4, 5]
        assert all(a["score"] >= b["score"] for a, b in zip(body["data"], body["data"][1:], strict=False))


def test_filters_keep_only_matching_products(http, served):
    women = {p["id"] for p in served.products if p["gender"] == "Women"}
    r = http.post("/v1/search", json={"text": "casual top", "k": 20, "filters": {"gender": "Women"}})
    assert r.status_code == 200, r.text
    hits = r.json()["data"]
    assert len(hits) == min(20, len(women)) and {h["id"] for h in hits} <= women
    colours = ["Black", "White"]
    r = http.post("/v1/search", json={"text": "shoes", "k": 20, "filters": {"gender": ["Men"], "colour": colours}})
    assert r.status_code == 200 and all(h["gender"] == "Men" and h["colour"] in colours for h in r.json()["data"])
    r = http.post("/v1/search", json={"text": "shoes", "filters": {"colour": "No Such Colour"}})
    assert r.status_code == 200 and r.json()["data"] == []


def test_image_and_text_query(http, served):
    product = served.products[1]
    raw = base64.b64encode(product["image"]).decode()
    r = http.post("/v1/search", json={"image": raw, "text": product["title"], "k": 3})
    assert r.status_code == 200, r.text
    assert r.json()["query"]["kind"] == "multimodal" and r.json()["data"][0]["id"] == product["id"]


def test_tiny_app_serves_its_saved_index(served, tiny_index):
    import httpx

    headers = {"Authorization": f"Bearer {served.key}"}
    assert httpx.get(f"{served.tiny_url}/healthz").json()["index_size"] == 20
    ready = httpx.get(f"{served.tiny_url}/readyz").json()
    assert ready["index"]["path"] == str(tiny_index) and ready["index"]["built_by"].startswith("moon-ray index")
    r = httpx.post(f"{served.tiny_url}/v1/search", json={"text": "shirt", "k": 4}, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    assert {h["id"] for h in r.json()["data"]} <= {p["id"] for p in served.products[:20]}


TOY = {"name": "toy", "kind": "baseline", "path": None, "fingerprint": "f" * 64, "config_hash": "c" * 64,
       "step": None, "reasoning": False}


def toy_index(vectors: np.ndarray, meta: dict) -> CatalogIndex:
    from moon_ray.eval.index_artifact import FORMAT
    from moon_ray.infrastructure.index import build_index

    manifest = {"format": FORMAT, "identity": TOY, "dim": vectors.shape[1], "count": vectors.shape[0],
                "faiss": {"kind": "flat", "hnsw_m": 32, "hnsw_ef_construction": 200}, "catalog": {}, "traces": {}}
    return CatalogIndex(vectors.astype(np.float32), meta, manifest, build_index(vectors.astype(np.float32)))


def test_filtered_search_is_exact_and_ordered():
    vecs = np.eye(4)[[0, 1, 0, 2, 3]] * 0.6 + 0.8 * np.eye(4)[[3, 3, 3, 3, 0]]  # unit rows
    meta = {c: [None] * 5 for c in ("title", "brand", "article_type", "season", "usage", "master_category",
                                    "sub_category", "material", "year", "split")}
    meta.update(id=list("abcde"), gender=["Men", "Women", "Men", "Men", "Women"],
                colour=["Red", "Red", "Blue", "Red", "Red"])
    index = toy_index(vecs, meta)
    q = np.array([1.0, 0, 0, 0])  # scores: a .6, b 0, c .6, d 0, e .8
    top = [h["id"] for h in index.search(q, 3)]
    assert top[0] == "e" and set(top[1:]) == {"a", "c"}  # a and c tie at 0.6
    hits = index.search(q, 3, {"gender": ["Men"], "colour": ["Red"]})
    assert [h["id"] for h in hits] == ["a", "d"] and [h["rank"] for h in hits] == [1, 2]
    assert hits[0]["score"] == pytest.approx(0.6)


def test_saved_index_refuses_another_model(tmp_path):
    meta = {c: ["x"] for c in ("id", "title", "brand", "article_type", "colour", "gender", "season", "usage",
                               "master_category", "sub_category", "material", "split")}
    meta["year"] = [2011]
    toy_index(np.ones((1, 4)) / 2, meta).save(tmp_path / "idx")
    cfg = load_config(None)
    loaded = CatalogIndex.load(tmp_path / "idx", cfg, TOY)
    np.testing.assert_array_equal(loaded.vectors, np.ones((1, 4), np.float32) / 2)
    assert loaded.meta["id"] == ["x"] and loaded.path == str(tmp_path / "idx")
    other = dict(TOY, name="other", fingerprint="0" * 64)
    with pytest.raises(ConfigError, match="built by baseline 'toy', but this server serves baseline 'other'"):
        CatalogIndex.load(tmp_path / "idx", cfg, other)
    with pytest.raises(FileNotFoundError, match="not a catalog index"):
        CatalogIndex.load(tmp_path, cfg, TOY)


def test_saved_hnsw_graph_is_read_not_rebuilt(tmp_path, monkeypatch):
    from moon_ray.infrastructure import index as faiss_helpers

    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(50, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    meta = {c: [str(i) for i in range(50)] for c in ("id", "title", "brand", "article_type", "colour", "gender",
                                                     "season", "usage", "master_category", "sub_category",
                                                     "material", "split")}
    meta["year"] = [2011] * 50
    saved = toy_index(vecs, meta)
    saved.manifest["faiss"] = {"kind": "hnsw", "hnsw_m": 32, "hnsw_ef_construction": 200}
    saved.save(tmp_path / "idx")
    cfg = load_config(None, ["serve.index=hnsw", "index.hnsw_ef_search=64"])

    def no_build(*args, **kwargs):
        raise AssertionError("the HNSW graph was rebuilt instead of read")

    monkeypatch.setattr(faiss_helpers, "build_index", no_build)
    loaded = CatalogIndex.load(tmp_path / "idx", cfg, TOY)
    assert type(loaded.index).__name__ == "IndexHNSWFlat" and loaded.index.hnsw.efSearch == 64
    assert loaded.search(vecs[7], 1)[0]["id"] == "7"
