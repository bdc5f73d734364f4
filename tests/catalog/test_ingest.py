"""Preprocessing end to end on Ray: a broken catalog with every reject reason, and a real slice."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from moon_ray.catalog.ingest import run_preprocess
from moon_ray.catalog.schema import PRODUCT_SCHEMA, QUERY_SCHEMA, REJECT_SCHEMA
from moon_ray.cli import main
from moon_ray.config import load_config

from .fixtures import huge_png_header, image_bytes, truncated_jpeg

HEADER = b"id,productDisplayName,gender,articleType,baseColour,img\n"
# (id, title bytes, article type, image file name, image bytes or None for no file, expected reason)
ROWS = [
    ("1", b"Nike Men Red Running Shoes", "Shoes", "1.jpg", image_bytes(), None),
    ("2", b"Nike Men Blue Cmyk Tshirt", "Tshirts", "2.jpg", image_bytes("CMYK"), None),
    ("3", b"Puma Women Leather Rgba Bag", "Handbags", "3.png", image_bytes("RGBA", fmt="PNG"), None),
    ("4", b"Puma Women Palette Top", "Tops", "4.png", image_bytes("P", fmt="PNG"), None),
    ("5", b"Puma Men Grey Gray Shirt", "Shirts", "5.jpg", image_bytes("L"), None),
    ("6", b"Nike &amp; Co <b>Men</b>  Html Shoes", "Shoes", "6.jpg", image_bytes(), None),
    ("7", b"Corrupt Men Shirt", "Shirts", "7.jpg", b"\xff\xd8\xff\xe0garbage-not-a-jpeg", "image_corrupt"),
    ("8", b"Truncated Men Shirt", "Shirts", "8.jpg", truncated_jpeg(), "image_truncated"),
    ("9", b"Missing Men Shirt", "Shirts", "9.jpg", None, "image_missing"),
    ("10", b"Tiny Men Shirt", "Shirts", "10.png", image_bytes(size=(1, 1), fmt="PNG"), "image_too_small"),
    ("11", b"Bomb Men Shirt", "Shirts", "11.png", huge_png_header(), "image_too_large"),
    ("1", b"Duplicate Men Shirt", "Shirts", "1.jpg", None, "duplicate_id"),
    ("13", b"   ", "Shirts", "1.jpg", None, "empty_title"),
    ("14", b"Bad \xff\xfe Men Shirt", "Shirts", "1.jpg", None, "invalid_utf8"),
    ("15", b"No Type Men Shirt", "", "1.jpg", None, "missing_field"),
]
MALFORMED = b'16,"Too, many",Men,Shirts,Red,16.jpg,extra,cells\n'


@pytest.fixture(scope="module")
def broken_catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    (root / "img").mkdir()
    lines = [HEADER]
    for pid, title, atype, name, data, _ in ROWS:
        if data is not None:
            (root / "img" / name).write_bytes(data)
        lines.append(b'%s,"%s",Men,%s,,%s\n' % (pid.encode(), title, atype.encode(), name.encode()))
    lines.insert(8, MALFORMED)
    (root / "catalog.csv").write_bytes(b"".join(lines))
    return root


@pytest.fixture(scope="module")
def broken_run(broken_catalog, ray_local):
    out = broken_catalog / "out"
    cfg = load_config(None, [
        f"data.catalog={broken_catalog / 'catalog.csv'}", f"data.image_dir={broken_catalog / 'img'}",
        "data.columns.image=img", "data.columns.master_category=null", "data.columns.sub_category=null",
        "data.columns.season=null", "data.columns.year=null", "data.columns.usage=null",
        f"data.output_dir={out}", "preprocess.image.size=64", "preprocess.image.min_side=8", "ray.progress=false",
    ])
    return run_preprocess(cfg), out


def test_every_reject_reason_and_count_conservation(broken_run):
    stats, out = broken_run
    rejects = pq.read_table(out / "rejects").to_pylist()
    by_id = {r["id"]: r for r in rejects if r["reason_code"] != "duplicate_id"}
    for pid, _, _, _, _, reason in ROWS:
        if reason and reason != "duplicate_id":
            assert by_id[pid]["reason_code"] == reason, (pid, by_id[pid])
            assert by_id[pid]["reason"].startswith(reason + ":")
    dup = [r for r in rejects if r["reason_code"] == "duplicate_id"]
    assert len(dup) == 1 and "already at row 0" in dup[0]["reason"]
    assert json.loads(dup[0]["raw"])["productDisplayName"] == "Duplicate Men Shirt"  # nothing lost
    assert [r["reason_code"] for r in rejects].count("malformed_row") == 1
    assert stats["input"] == len(ROWS) + 1 == stats["ok"] + stats["rejected"]
    assert stats["ok"] == 6 and stats["rejected"] == 10
    assert json.loads((out / "stats.json").read_text())["reject_reasons"]["image_missing"] == 1


def test_valid_rows_cleaned_and_converted(broken_run):
    _, out = broken_run
    products = {r["id"]: r for r in pq.read_table(out / "products").to_pylist()}
    assert set(products) == {"1", "2", "3", "4", "5", "6"}
    assert products["6"]["title"] == "Nike & Co Men Html Shoes"
    assert products["2"]["image_mode"] == "CMYK" and products["3"]["image_mode"] == "RGBA"
    for row in products.values():
        img = Image.open(io.BytesIO(row["image"]))
        assert img.size == (64, 64) and img.mode == "RGB"
    assert products["3"]["material"] == "Leather" and products["1"]["colour"] == "Red"
    assert products["1"]["brand"] == "Nike" and products["1"]["gender"] == "Men"


def test_real_slice_end_to_end(real_slice):
    stats = json.loads((real_slice / "stats.json").read_text())
    assert stats["input"] == 400 == stats["ok"] + stats["rejected"]
    products = pq.read_table(real_slice / "products")
    assert products.schema.names == PRODUCT_SCHEMA.names
    assert products.num_rows == stats["ok"] > 390
    assert pq.read_table(real_slice / "rejects").schema.names == REJECT_SCHEMA.names
    rows = products.to_pylist()
    assert {r["split"] for r in rows} <= {"train", "val", "test"}
    assert sum(r["brand"] is not None for r in rows) > 380
    assert Image.open(io.BytesIO(rows[0]["image"])).size == (224, 224)
    by_id = {r["id"]: r for r in rows}
    queries = pq.read_table(real_slice / "queries" / "test.parquet")
    assert queries.schema == QUERY_SCHEMA and queries.num_rows == stats["queries"]["test"] > 10
    for q in queries.to_pylist():
        for pid in q["relevant_ids"]:
            p = by_id[pid]
            assert p["split"] == "test" and q["text"] == f"{p['gender']} {p['colour']} {p['article_type']}"


def test_split_is_stable_across_runs(real_slice, tmp_path, shared_data, ray_local):
    from tests.conftest import real_overrides

    run_preprocess(load_config(None, real_overrides(shared_data, tmp_path, 100)))
    first = {r["id"]: r["split"] for r in pq.read_table(real_slice / "products").to_pylist()}
    again = {r["id"]: r["split"] for r in pq.read_table(tmp_path / "products").to_pylist()}
    assert all(first[k] == v for k, v in again.items()) and len(again) > 90


def test_cli_errors_name_the_problem(capsys):
    assert main(["preprocess", "data.limt=3"]) == 2
    assert "unknown config key 'data.limt'" in capsys.readouterr().err
    assert main(["preprocess", "data.catalog=/nonexistent.csv"]) == 2
    assert "/nonexistent.csv does not exist" in capsys.readouterr().err
    assert main(["preprocess", "data.columns.title=Title"]) == 2
    assert "data.columns.title = 'Title' is not a column" in capsys.readouterr().err
