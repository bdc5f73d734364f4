"""Deterministic train/val/test split by salted id hash, and text queries derived from attributes."""

from __future__ import annotations

import collections
import hashlib

import pyarrow as pa

from moon_ray.catalog.schema import QUERY_SCHEMA
from moon_ray.config import SplitConfig

SPLITS = ("train", "val", "test")


def unit_hash(product_id: str, seed: str) -> float:
    """A uniform number in [0, 1) from blake2b(seed:id); stable across runs and machines."""
    digest = hashlib.blake2b(f"{seed}:{product_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_of(product_id: str, cfg: SplitConfig) -> str:
    u = unit_hash(product_id, cfg.seed)
    if u < cfg.train:
        return "train"
    if u < cfg.train + cfg.val:
        return "val"
    return "test"


def query_text(gender: str | None, colour: str | None, article_type: str | None) -> str:
    """'Men Navy Blue Shirts' from the attributes (missing ones left out)."""
    return " ".join(p for p in (gender, colour, article_type) if p)


def derive_queries(table: pa.Table, split: str, min_relevant: int = 1) -> pa.Table:
    """One query per (gender, colour, article type) present in `split`; relevant = all its products.

    `table` needs columns id, gender, colour, article_type, split. Queries are sorted by text, so
    the same products give the same query ids.
    """
    groups: dict[tuple, list[str]] = collections.defaultdict(list)
    cols = table.select(["id", "gender", "colour", "article_type", "split"]).to_pydict()
    for pid, g, c, a, s in zip(cols["id"], cols["gender"], cols["colour"], cols["article_type"], cols["split"], strict=True):
        if s == split and g and c and a:
            groups[(g, c, a)].append(pid)
    rows = sorted((query_text(*k), k, sorted(v)) for k, v in groups.items() if len(v) >= min_relevant)
    return pa.Table.from_pylist(
        [
            {"query_id": f"{split}-{i}", "text": text, "gender": k[0], "colour": k[1], "article_type": k[2], "relevant_ids": ids}
            for i, (text, k, ids) in enumerate(rows)
        ],
        schema=QUERY_SCHEMA,
    )
