import pyarrow as pa
import pytest

from moon_ray.catalog import text
from moon_ray.catalog.entities import Gazetteer, extract, gender_in
from moon_ray.catalog.splits import derive_queries, split_of, unit_hash
from moon_ray.config import SplitConfig


def test_normalise():
    assert text.normalise("  Nike&amp;Co <b>Men</b>\u00a0 Shoe\x07 ") == "Nike&Co Men Shoe"
    assert text.normalise("ＡＢＣ\tdef\n") == "ABC def"  # NFKC folds full-width letters
    assert text.normalise(None) == ""
    assert text.is_missing("NA") and text.is_missing(" ") and not text.is_missing("Navy")


def test_decode_strict_utf8():
    assert text.decode(b"caf\xc3\xa9", "title") == "café"
    assert text.decode(42, "id") == "42"
    with pytest.raises(text.TextError, match=r"invalid_utf8: column 'title' byte 3"):
        text.decode(b"bad\xff", "title")


TITLES = [
    "Manchester United Men Red Tshirt",
    "Manchester United Men Black Track Pants",
    "Turtle Check Men Navy Blue Shirt",
    "Turtle Men Solid White Shirt",
    "Turtle Men Blue Jeans",
    "Turtle Check Men Grey Shirt",
    "Reid & Taylor Men Check Purple Shirts",
    "Reid & Taylor Men Formal Black Trousers",
    "Solo Women Leather Handbag",
]


def test_gazetteer_learns_brand_boundaries():
    gaz = Gazetteer.learn(TITLES, ["Navy Blue", "Off White"], min_support=2, extend_ratio=0.8)
    # "Manchester United" starts 2/2 "Manchester" titles -> kept whole
    assert gaz.brand_of("Manchester United Men Blue Jersey") == "Manchester United"
    # "Turtle Check" starts 2/4 "Turtle" titles (< 0.8) -> the brand stops at "Turtle"
    assert gaz.brand_of("Turtle Check Men Yellow Shirt") == "Turtle"
    assert gaz.brand_of("Reid & Taylor Men Blue Blazer") == "Reid & Taylor"
    assert gaz.brand_support["turtle"] == 4
    # a brand seen once: the words before the gender word
    assert gaz.brand_of("Solo Women Red Clutch") == "Solo"
    assert gaz.brand_of("plain socks") is None


def test_colour_material_gender_and_extract():
    gaz = Gazetteer.learn(TITLES, ["Navy Blue"])
    assert gaz.colour_in("Turtle Men Navy Blue Shirt") == "Navy Blue"  # longest phrase wins over Blue
    assert gaz.material_in("Clarks Men Genuine Leather Shoes") == "Leather"
    assert gender_in("Puma Women Running Shoes") == "Women"
    ents = extract({"title": "Solo Women Leather Red Handbag", "master_category": "Accessories",
                    "sub_category": None, "article_type": "Handbags", "colour": None, "gender": None}, gaz)
    assert ents == {"brand": "Solo", "category_path": ["Accessories", "Handbags"], "colour": "Red",
                    "material": "Leather", "gender": "Women", "season": None, "usage": None}
    assert Gazetteer.from_json(gaz.to_json()).brands == gaz.brands


def test_split_is_deterministic_and_follows_fractions():
    cfg = SplitConfig(train=0.6, val=0.1, test=0.3, seed="s")
    splits = [split_of(str(i), cfg) for i in range(20000)]
    assert splits == [split_of(str(i), cfg) for i in range(20000)]
    for name, frac in (("train", 0.6), ("val", 0.1), ("test", 0.3)):
        assert abs(splits.count(name) / 20000 - frac) < 0.015
    assert unit_hash("1", "a") != unit_hash("1", "b")


def test_derive_queries_hand_checked():
    table = pa.table({
        "id": ["1", "2", "3", "4", "5"],
        "gender": ["Men", "Men", "Women", "Men", "Men"],
        "colour": ["Navy Blue", "Navy Blue", "Red", "Navy Blue", None],
        "article_type": ["Shirts", "Shirts", "Tops", "Shirts", "Shirts"],
        "split": ["test", "test", "test", "train", "test"],
    })
    q = derive_queries(table, "test").to_pylist()
    assert [(r["text"], r["relevant_ids"]) for r in q] == [("Men Navy Blue Shirts", ["1", "2"]), ("Women Red Tops", ["3"])]
    assert [r["query_id"] for r in q] == ["test-0", "test-1"]
    assert [r["text"] for r in derive_queries(table, "test", min_relevant=2).to_pylist()] == ["Men Navy Blue Shirts"]
