"""Held-out query wordings: never a string the training sampler writes for the product.

`training_wordings` is reasoned out from `make_batch` (moon_ray/train/task.py); this test also runs
`make_batch` itself many times and checks that every query it writes is in that set, so the reasoning
and the sampler cannot drift apart unnoticed."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from moon_ray.catalog import wording as W
from moon_ray.config import ConfigError, load_config

PRODUCTS = [  # brand, gender, colour, article type
    ("Nike", "Men", "Navy Blue", "Tshirts"),
    ("Puma", "Women", "Black", "Casual Shoes"),
    ("Lee Cooper", "Unisex", "Grey", "Sunglasses"),
    ("Fabindia", "Girls", "Red", "Kurtas"),
    (None, "Boys", "White", "Shirts"),
    ("Unisex", "Unisex", "Unisex", "Unisex"),  # degenerate values: the blocked check still holds
]


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def test_training_wordings_by_hand():
    got = W.training_wordings("Nike", "Men", "Navy Blue", "Tshirts")
    assert got == {
        "Tshirts", "Men", "Navy Blue",  # single-attribute queries
        "Nike Tshirts", "Men Tshirts", "Navy Blue Tshirts",
        "Nike Men Tshirts", "Nike Navy Blue Tshirts", "Men Navy Blue Tshirts",
        "Nike Men Navy Blue Tshirts",
    }
    assert W.training_wordings(None, "Boys", None, "Shirts") == {"Shirts", "Boys", "Boys Shirts"}


def test_make_batch_only_writes_training_wordings():
    pytest.importorskip("torch")
    from moon_ray.train import task

    assert set(W.TRAINING_QUERY_FIELDS) == set(task.ATTRS) and set(W.SINGLE_QUERY_FIELDS) == set(task.SINGLE_ATTRS)
    image = jpeg()
    rows = {f: np.array([p[i] for p in PRODUCTS], dtype=object) for i, f in enumerate(W.TRAINING_QUERY_FIELDS)}
    rows.update(title=np.array(["t"] * len(PRODUCTS), dtype=object), image=np.array([image] * len(PRODUCTS), dtype=object))
    rng = random.Random(0)
    written: list[set[str]] = [set() for _ in PRODUCTS]
    for _ in range(150):
        for i, text in enumerate(task.make_batch(rows, rng, image_size=32).text_queries):
            written[i].add(text)
    for product, seen in zip(PRODUCTS, written, strict=True):
        allowed = W.training_wordings(*product)
        assert seen <= allowed, seen - allowed
        assert len(seen) >= len(allowed) - 2  # the sampler reaches (nearly) all of them: the set is not too wide


@pytest.mark.parametrize("seed", [0, 1])
def test_unseen_wording_is_never_a_training_wording(seed):
    texts = []
    for k, (brand, gender, colour, article) in enumerate(PRODUCTS * 40):
        forbidden = W.training_wordings(brand, gender, colour, article)
        text = W.unseen_wording(gender, colour, article, key=f"test-{k}", seed=seed, forbidden=forbidden)
        assert text not in forbidden
        assert W.same_words(text) not in {W.same_words(f) for f in forbidden}  # not even up to case/punctuation
        texts.append(text)
    assert len(set(texts)) > len(PRODUCTS) * 5  # varied: templates, synonyms, forms, case
    assert W.unseen_wording("Men", "Navy Blue", "Tshirts", "q", seed) == W.unseen_wording("Men", "Navy Blue", "Tshirts", "q", seed)


def test_wording_pieces():
    assert [W.toggle_number(x) for x in ("Shirts", "Dresses", "Watch", "Bra", "Casual Shoes", "Dress")] == \
        ["Shirt", "Dress", "Watches", "Bras", "Casual Shoe", "Dresses"]
    rng = random.Random(3)
    typo = W.add_typo("navy blue shirts for men", rng)
    assert typo != "navy blue shirts for men" and abs(len(typo) - 24) <= 1 and typo.split()[-2:] == ["for", "men"]
    assert W.same_words("Men's  T-Shirts") == "men s t shirts"
    rendered = [W.unseen_wording("Men", "Grey", "Tshirts", f"k{i}") for i in range(400)]
    assert any(r.islower() for r in rendered) and any(not r.islower() for r in rendered)
    assert any("tee" in r.casefold() for r in rendered) and any("gray" in r.casefold() for r in rendered)
    typos = sum(not any(w in r.casefold() for w in ("tshirt", "tee", "t-shirt")) for r in rendered)
    assert typos < 60  # a small typo rate (5 %), not most queries


def test_lowercase_queries_are_training_wordings_in_lowercase_and_off_draws_as_before():
    pytest.importorskip("torch")
    from moon_ray.train import task

    image = jpeg()
    rows = {f: np.array([p[i] for p in PRODUCTS], dtype=object) for i, f in enumerate(W.TRAINING_QUERY_FIELDS)}
    rows.update(title=np.array(["t"] * len(PRODUCTS), dtype=object), image=np.array([image] * len(PRODUCTS), dtype=object))
    off = task.make_batch(rows, random.Random(7), image_size=32, lowercase_p=0.0)
    # what make_batch drew for this seed before train.query_lowercase_p existed (commit 79e0d4e)
    assert off.text_queries == ["Men Navy Blue Tshirts", "Women", "Sunglasses", "Kurtas", "White Shirts",
                                "Unisex Unisex Unisex Unisex"]
    assert off.seed == 271879265977543178
    lowered = total = 0
    rng = random.Random(1)
    for _ in range(100):
        for product, text in zip(PRODUCTS, task.make_batch(rows, rng, 32, lowercase_p=0.5).text_queries, strict=True):
            allowed = {W.same_words(t) for t in W.training_wordings(*product)}
            assert W.same_words(text) in allowed, text
            lowered += text == text.lower()  # the catalog values are capitalised
            total += 1
    assert 0.35 < lowered / total < 0.65, lowered / total
    with pytest.raises(ConfigError, match="query_lowercase_p"):
        load_config(None, ["train.query_lowercase_p=1.5"])
