"""Rationales state only the product's attributes; beyond-the-title queries; trace-quality metrics."""

import random

import numpy as np
import pytest

from moon_ray.catalog.rationales import (
    attribute_query,
    beyond_title,
    mentions,
    product_fields,
    render_rationale,
)
from moon_ray.eval.trace_quality import trace_quality

VOCAB = {
    "colour": ["Red", "Blue", "Navy Blue", "Black", "White", "Green"],
    "season": ["Fall", "Winter", "Spring", "Summer"],
    "usage": ["Casual", "Formal", "Sports", "Ethnic"],
    "gender": ["Men", "Women", "Unisex", "Boys", "Girls"],
    "material": ["Leather", "Cotton", "Denim"],
}


def test_mentions_is_word_wise_and_plural_insensitive():
    assert mentions("Nike Men Shoe", "Men") and not mentions("Nike Women Shoe", "Men")
    assert mentions("a black watch", "Watches") and mentions("navy blue shirt", "Navy Blue")
    assert not mentions("blue navy", "Navy Blue")


def test_rationale_never_states_an_attribute_the_product_lacks():
    rng = random.Random(0)
    seen = set()
    for i in range(300):
        fields = {"brand": "Acme", "article_type": rng.choice(["Shirts", "Watches", "Flip Flops"])}
        for f, values in VOCAB.items():
            fields[f] = rng.choice(values) if rng.random() < 0.6 else None
        text = render_rationale(fields, random.Random(i))
        seen.add(text)
        assert mentions(text, fields["article_type"])
        for f, values in VOCAB.items():
            own = fields[f]
            for v in values:
                if mentions(text, v):  # any value stated must be the product's (or part of it)
                    assert own is not None and mentions(own, v), (text, f, v, fields)
            if own:
                assert mentions(text, own), (text, f)
    assert len(seen) > 250  # varied wordings and orders


def test_product_fields_missing_columns_and_empty_values():
    rows = {"title": np.array(["A", "B"], dtype=object), "colour": np.array(["Red", None], dtype=object),
            "season": np.array(["", "Summer"], dtype=object)}
    fields = product_fields(rows)
    assert fields[0]["colour"] == "Red" and fields[0]["season"] is None and fields[0]["usage"] is None
    assert fields[1]["colour"] is None and fields[1]["season"] == "Summer"


def test_beyond_title_and_attribute_query():
    fields = {"gender": "Men", "colour": "Navy Blue", "season": "Fall", "usage": "Casual", "article_type": "Shirts",
              "brand": "Turtle", "material": None}
    title = "Turtle Check Men Navy Blue Shirt"
    assert beyond_title(fields, title) == ["season", "usage"]
    assert attribute_query(fields, title) == ("Fall Casual Shirts", ("season", "usage", "article_type"))
    full = "Turtle Men Navy Blue Fall Casual Shirt"
    assert attribute_query(fields, full) is None


def test_trace_quality_by_hand():
    fields = [{"colour": "Red", "season": "Summer", "usage": "Casual", "gender": "Men", "article_type": "Shirts"},
              {"colour": "Blue", "season": "Winter", "usage": "Formal", "gender": "Women", "article_type": "Shirts"}]
    titles = ["Acme Men Red Shirt", "Acme Women Blue Shirt"]
    traces = ["red shirt for summer", "Acme Women Blue Shirt Acme"]
    q = trace_quality(traces, titles, fields)
    assert q["adds_attribute"] == 0.5  # trace 0 states summer (not in its title); trace 1 nothing new
    assert q["title_copy"] == 0.5
    assert q["repetition"] == pytest.approx((0 + 1 / 5) / 2)
    assert q["distinct_1"] == pytest.approx(7 / 9)  # red shirt for summer acme women blue (shirt, acme repeat)
    assert q["wrong_attribute"] == 0.0
    # product 0 is red and summer: "blue", "winter" are other products' values; product 1 is blue
    assert trace_quality(["blue shirt, winter", "blue shirt"], titles, fields)["wrong_attribute"] == 0.5
    with pytest.raises(ValueError, match="traces"):
        trace_quality(["a"], [], [])
