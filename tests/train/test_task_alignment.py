"""Issue 20 items 2 and 3, training side: attribute texts (training wordings only, never a held-out
one), the attribute and title -> image losses (absent when off, new gradients when on), shop views."""

from __future__ import annotations

import csv
import itertools
import random
import re

import numpy as np
import pytest
import torch
from PIL import Image

from moon_ray.catalog import wording as W
from moon_ray.config import ConfigError, load_config
from moon_ray.models.embedder import MoonEmbedder
from moon_ray.models.temperature import Temperature
from moon_ray.train import task
from moon_ray.train.augment import SHOP_HIGH, SHOP_LOW, shop_view, to_shop_resolution
from tests.catalog.fixtures import image_bytes
from tests.conftest import SHARED_DATA
from tests.models.batches import rows

PRODUCTS = [  # brand, gender, colour, article type
    ("Nike", "Men", "Navy Blue", "Tshirts"), ("Puma", "Women", "Black", "Casual Shoes"),
    (None, "Boys", "White", "Shirts"), ("Fabindia", "Girls", None, "Kurtas"), (None, None, "Red", None),
]
TINY = ["model.lm.tiny=true", "model.vision.name=tiny", "model.vision.pretrained=false", "model.embed_dim=32",
        "model.matryoshka=[16,32]", "model.fusion_heads=4", "train.batch_size=4"]


def tokens(text: str) -> set[str]:
    return set(W.same_words(text).split())


def product_rows(products=PRODUCTS) -> dict[str, np.ndarray]:
    out = {f: np.array([p[i] for p in products], dtype=object) for i, f in enumerate(W.TRAINING_QUERY_FIELDS)}
    out["title"] = np.array([f"title {i}" for i in range(len(products))], dtype=object)
    out["image"] = np.array([image_bytes(size=(32, 32)) for _ in products], dtype=object)
    return out


def test_marker_words_are_in_no_held_out_wording_and_in_every_attribute_template():
    vocab = set()
    for template in W.TEMPLATES:
        vocab |= tokens(re.sub(r"\{\w+\}", " ", template))
    for table in (W.GENDER_NOUN, W.GENDER_ADJ, W.TYPE_SYNONYMS, W.COLOUR_SYNONYMS):
        for key, values in table.items():
            vocab |= tokens(key) | set().union(*(tokens(v) for v in values))
    with open(SHARED_DATA / "styles.csv", newline="", encoding="utf-8", errors="replace") as f:
        for row in csv.DictReader(f):
            for column in ("gender", "baseColour", "articleType"):
                value = row.get(column) or ""
                vocab |= tokens(value) | tokens(W.toggle_number(value) if value else "")
    assert not W.ATTRIBUTE_MARKERS & vocab, W.ATTRIBUTE_MARKERS & vocab
    templates = [*W.COMBINATION_TEMPLATES, *W.COLOUR_TYPE_TEMPLATES, *(t for ts in W.ATTRIBUTE_TEMPLATES.values() for t in ts)]
    for template in templates:
        assert tokens(re.sub(r"\{\w+\}", " ", template)) & W.ATTRIBUTE_MARKERS, template


def test_attribute_texts_are_training_wordings_and_never_a_held_out_one():
    batch_rows, rng = product_rows(), random.Random(0)
    seen: list[set[str]] = [set() for _ in PRODUCTS]
    for _ in range(200):
        batch = task.make_batch(batch_rows, rng, image_size=32)
        texts, named = task.attribute_texts(batch, random.Random(batch.seed))
        for i, (text, used) in enumerate(zip(texts, named.tolist(), strict=True)):
            values = {a: batch.attrs[i][a] for a, u in zip(task.ATTRS, used, strict=True) if u}
            assert values and W.same_words(text) in {W.same_words(w) for w in W.attribute_wordings(values)}
            seen[i].add(text)
    for product, texts in zip(PRODUCTS, seen, strict=True):
        plain = {W.same_words(w) for w in W.training_wordings(*product)}
        # either the plain training template, or a marker template: never a new marker-free wording
        assert all(W.same_words(t) in plain or tokens(t) & W.ATTRIBUTE_MARKERS for t in texts)
        assert any(W.same_words(t) in plain for t in texts) and any(tokens(t) & W.ATTRIBUTE_MARKERS for t in texts)
        if product[3] and product[1] and product[2]:
            values = dict(zip(W.TRAINING_QUERY_FIELDS, product, strict=True))
            subsets = [dict(c) for r in range(1, 5) for c in itertools.combinations(values.items(), r)]
            blocked = {W.same_words(w) for s in subsets if all(s.values()) for w in W.attribute_wordings(s)}
            for k in range(60):  # the held-out evaluation wordings of this product's query
                held_out = W.unseen_wording(product[1], product[2], product[3], key=f"q{k}",
                                            forbidden=W.training_wordings(*product))
                assert W.same_words(held_out) not in blocked


def alignment_step(cfg, model, batch):
    torch.manual_seed(0)
    model.zero_grad(set_to_none=True)
    losses, metrics = task.training_forward(model, Temperature(0.05, False), batch, cfg)
    sum(v for k, v in losses.items() if k.endswith("_loss")).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return losses, metrics, grads


def test_alignment_losses_absent_when_off_and_change_gradients_when_on():
    off_cfg = load_config(None, [*TINY, "train.attr_weight=0", "train.title_image_weight=0"])
    model = MoonEmbedder(off_cfg.model).eval()  # eval: no dropout, so both passes see the same network
    batch = task.make_batch(rows(4), random.Random(0), 224)
    off, _, g_off = alignment_step(off_cfg, model, batch)
    assert not {"attr_loss", "title_image_loss"} & set(off)
    for switch, key in (("train.attr_weight=1.0", "attr_loss"), ("train.title_image_weight=1.0", "title_image_loss")):
        on, metrics, g_on = alignment_step(load_config(None, [*TINY, "train.attr_weight=0", "train.title_image_weight=0",
                                                              switch]), model, batch)
        assert set(on) == set(off) | {key} and torch.isfinite(on[key]) and on[key] > 0
        for k in off:  # the other terms are untouched by the switch
            assert torch.allclose(on[k], off[k], atol=1e-5), k
        changed = [n for n in g_off if not torch.allclose(g_on[n], g_off[n], atol=1e-7)]
        assert any(n.startswith("projector.") for n in changed) and any("lora" in n for n in changed), changed
        assert ("attr_image_acc" in metrics) == (key == "attr_loss")


def test_attribute_positives_follow_the_named_attributes():
    """Text 'Navy Blue' (colour only) is a positive of both navy products; a type+colour text only of
    its own; the reverse direction is the transpose."""
    products = [("A", "Men", "Navy Blue", "Shirts"), ("B", "Men", "Navy Blue", "Tshirts"), ("C", "Men", "Red", "Shirts")]
    batch = task.make_batch(product_rows(products), random.Random(0), 32)
    named = torch.tensor([[False, True, False, False], [False, True, False, False], [False, True, True, False]])
    got = task.text_positives(batch.attr_ids, named, batch.attr_ids)
    assert got.tolist() == [[True, True, False], [True, True, False], [False, False, True]]


def test_shop_resolution_range_and_views():
    rng, img = random.Random(0), Image.new("RGB", (224, 224), (120, 30, 30))
    sizes = [to_shop_resolution(img, rng).size for _ in range(400)]
    assert all(SHOP_LOW[0] <= w <= SHOP_HIGH[0] and SHOP_LOW[1] <= h <= SHOP_HIGH[1] for w, h in sizes)
    assert all(abs(h / w - 4 / 3) < 0.02 for w, h in sizes)
    assert min(w for w, _ in sizes) <= 62 and max(w for w, _ in sizes) >= 170  # both ends are reached
    assert sum(w <= 100 for w, _ in sizes) > 150  # thumbnails are common
    view = shop_view(image_bytes(size=(64, 64)), random.Random(1), 224)
    assert view.size == (224, 224) and view.mode == "RGB"
    batch = task.make_batch(rows(4), random.Random(0), 64)
    assert task.query_views(batch, 0.0, 64) is batch.views
    shop = task.query_views(batch, 1.0, 64)
    assert all(a.size == (64, 64) and a.tobytes() != b.tobytes() for a, b in zip(shop, batch.views, strict=True))


@pytest.mark.parametrize("bad", ["train.attr_weight=-1", "train.title_image_weight=-0.5", "train.shop_view_p=1.5"])
def test_bad_switches_are_refused(bad):
    with pytest.raises(ConfigError, match=bad.split("=")[0].split(".")[1]):
        load_config(None, [bad])


def test_paraphrased_queries_name_the_same_attributes_in_a_marker_wording_and_off_draws_as_before():
    batch_rows = product_rows()
    off = task.make_batch(batch_rows, random.Random(3), image_size=32)
    same = task.make_batch(batch_rows, random.Random(3), image_size=32, paraphrase_p=0.0)
    assert off.text_queries == same.text_queries and off.seed == same.seed
    rng, marked, total = random.Random(5), 0, 0
    for _ in range(100):
        batch = task.make_batch(batch_rows, rng, image_size=32, paraphrase_p=0.5)
        for i, (text, used) in enumerate(zip(batch.text_queries, batch.query_attrs.tolist(), strict=True)):
            values = {a: batch.attrs[i][a] for a, u in zip(task.ATTRS, used, strict=True) if u}
            if not values:  # a product without article type, its attributes left out by chance: no query words
                assert text == ""
                continue
            # the attributes (so the positives) of the plain query, in one of their training wordings
            assert W.same_words(text) in {W.same_words(w) for w in W.attribute_wordings(values)}, text
            marked += bool(tokens(text) & W.ATTRIBUTE_MARKERS)
            total += 1
    assert 0.35 < marked / total < 0.65, marked / total
    with pytest.raises(ConfigError, match="query_paraphrase_p"):
        load_config(None, ["train.query_paraphrase_p=-0.1"])
