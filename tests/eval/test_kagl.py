"""The KAGL protocol (Marqo's public benchmark): hand-checked scoring, query sampling, and one small
end-to-end run through `moon-ray eval --protocol kagl` with the random baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moon_ray.eval import kagl
from moon_ray.eval.data import EvalSet

FIELDS = ("master_category", "sub_category", "article_type", "colour", "season", "usage")


def toy_set(titles: list[str], **columns) -> EvalSet:
    n = len(titles)
    products = {"id": [str(i) for i in range(n)], "title": titles, "image": [b"x"] * n}
    products.update({f: columns.get(f, [None] * n) for f in FIELDS})
    return EvalSet(split="test", products=products, queries=[], query_relevant=[])


def test_scoring_by_hand():
    e = np.eye(8, dtype=np.float32)
    data = toy_set(["A", "B", "B", "C", "D"],
                   master_category=["Apparel", "Apparel", "Footwear", "Footwear", "Apparel"])
    image = e[:5]  # product i's image vector: e_i
    text = {"A": e[0], "B": e[1], "C": e[4], "D": e[4], "Apparel": e[0], "Footwear": e[1]}
    queries = {t.name: kagl.kagl_queries(data, t, seed=0) for t in kagl.TASKS}
    assert queries["text-to-image"] == (["A", "B", "C", "D"], [[0], [1, 2], [3], [4]])
    assert queries["category-to-product"] == (["Apparel", "Footwear"], [[0, 1, 4], [2, 3]])
    out = kagl.score_kagl(data, queries, image, text.__getitem__, seed=0, n_boot=200)
    m = out["metrics"]
    # text-to-image (documents: images only). A: rank 1. B: product 1 at rank 1, product 2 tied at 0
    # behind it -> R@1 = 1/2, R@10 = 1. C: query is e4, product 3 ties at 0 -> ranked 4,0,1,2,3: rank 5.
    assert m["text-to-image/R@1"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert m["text-to-image/R@10"] == pytest.approx(1.0)
    assert m["text-to-image/MRR"] == pytest.approx((1 + 1 + 1 / 5 + 1) / 4)
    # category-to-product (documents: normalize(0.9 image + 0.1 title)). "Apparel" = e0: product 0 first,
    # the rest tie at 0 -> P@1 = 1, P@10 = 3/10, MRR 1. "Footwear" = e1: product 1 (score 1, not
    # Footwear), then product 2 whose *title* "B" is e1 (score 0.1/|(0.9, 0.1)|) -> P@1 0, P@10 2/10, MRR 1/2.
    assert m["category-to-product/P@1"] == pytest.approx(0.5)
    assert m["category-to-product/P@10"] == pytest.approx(0.25)
    assert m["category-to-product/MRR"] == pytest.approx(0.75)
    assert out["counts"]["text-to-image"] == 4 and out["counts"]["season-to-product"] == 0
    assert "season-to-product/P@1" not in m
    lo, hi = out["ci95"]["text-to-image/MRR"]
    assert 0 <= lo <= m["text-to-image/MRR"] <= hi <= 1
    md = kagl.kagl_markdown({**out, "model": "toy", "split": "test", "n_products": 5})
    assert "| category-to-product | 2 | P@10 | 0.250 |" in md and "| season-to-product | 0 | P@1 | — |" in md


def test_mixed_documents_follow_the_weights():
    image, title = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    np.testing.assert_allclose(kagl.mixed_documents(image, title), [[0.9, 0.1] / np.hypot(0.9, 0.1)], rtol=1e-6)


def test_queries_are_sampled_to_2000_with_a_seed():
    titles = [f"title {i:05d}" for i in range(2500)] + ["title 00001"]
    data = toy_set(titles)
    task = kagl.TASKS[0]
    texts, relevant = kagl.kagl_queries(data, task, seed=0)
    assert len(texts) == kagl.MAX_QUERIES and texts == sorted(texts)
    assert kagl.kagl_queries(data, task, seed=0)[0] == texts
    assert kagl.kagl_queries(data, task, seed=1)[0] != texts
    by_text = dict(zip(texts, relevant, strict=True))
    assert by_text.get("title 00001", [1, 2500]) == [1, 2500]  # every product with that exact title


def test_published_numbers_cover_every_task_metric():
    keys = {f"{t.name}/{m}" for t in kagl.TASKS for m in t.metrics}
    for model, numbers in kagl.PUBLISHED.items():
        assert set(numbers) == keys, model
        assert all(0 < v < 1 for v in numbers.values())
    assert kagl.PUBLISHED["Marqo-FashionSigLIP"]["text-to-image/R@10"] == 0.489


def test_kagl_end_to_end_with_the_random_baseline(real_slice, tmp_path, ray_local, capsys):
    from moon_ray.cli import main
    from moon_ray.config import load_config
    from moon_ray.eval.data import load_split

    overrides = [f"data.output_dir={real_slice}", f"eval.output_dir={tmp_path}", "ray.progress=false",
                 "eval.num_actors=1", "eval.cpus_per_actor=0.5", "eval.batch_size=64"]
    assert main(["eval", "--protocol", "kagl", "--model", "random", *overrides]) == 0
    printed = capsys.readouterr().out
    assert "Marqo-FashionSigLIP" in printed
    run = tmp_path / "random-kagl"
    results = json.loads((run / "results.json").read_text())
    data = load_split(load_config(None, overrides))
    assert results["protocol"] == "kagl" and results["n_products"] == data.size
    assert results["counts"]["text-to-image"] == len(set(data.products["title"]))
    assert results["counts"]["category-to-product"] == len({v for v in data.products["master_category"] if v})
    for key, value in results["metrics"].items():
        lo, hi = results["ci95"][key]
        assert 0.0 <= lo <= value <= hi <= 1.0, key
    # random vectors: a title finds its own image no better than chance (R@10 ~ 10 / N)
    assert results["metrics"]["text-to-image/R@10"] < 0.5
    md = (run / "results.md").read_text()
    assert f"| corpus (products) | | | {data.size:,} (test split) |" in md
    assert "44,434 (all KAGL)" in md and "| text-to-image |" in md and "0.179" in md
    # eval.low_res (default on): every task again on documents embedded from 60×80 thumbnails
    assert {k.replace("-lowres/", "/") for k in results["metrics"] if "-lowres/" in k} == set(
        k for k in results["metrics"] if "-lowres/" not in k)
    assert results["counts"]["text-to-image-lowres"] == results["counts"]["text-to-image"]
    assert "ours, 60×80 images" in md
