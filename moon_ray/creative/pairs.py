"""`moon-ray creative pairs`: a CreativePair-style dataset built from the preprocessed catalog by Ray Data.

    moon-ray creative pairs [--config pipelines/configs/creative.yaml] [--limit N] [key.sub=value ...]

Labels come from construction, not from people:
- quality pair: a product's catalog image against a worse creative of the same product (one defect of
  moon_ray/creative/defects.py); the catalog image wins, the defect is the reason;
- interest pair: two different products of the same split, an interest text built from the first one's
  attributes; it wins, and the reason is the attribute the other one gets wrong (colour, kind of
  product or audience), the other named attributes being equal where the catalog allows.
Every pair shows the shopper's interest text (for a quality pair it fits both images), and the
winner sits at A or B at random.

The plan (which products, defect, interest, position) is drawn on the driver from `creative.pairs.seed`;
rendering (image operations, JPEG encoding) runs in Ray Data tasks that write their Parquet files
themselves, so images never come back through the object store. Splits follow the catalog's product
split (train / val / test by product id), so the splits share no product.

Output under creative.pairs.output_dir: <split>/part-*.parquet (PAIR_SCHEMA) and stats.json.
"""

from __future__ import annotations

import collections
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pac
import pyarrow.parquet as pq
from PIL import Image

from moon_ray.config import Config
from moon_ray.config.creative import CreativePairsConfig
from moon_ray.creative.defects import apply_defect
from moon_ray.creative.rationale import (
    INTEREST_ATTRS,
    VISIBLE_ATTRS,
    describe,
    interest_text,
    render_rationale,
    target_answer,
)

SPLITS = ("train", "val", "test")
ATTR_COLUMNS = ["id", "title", "gender", "colour", "article_type", "usage", "split"]
PAIR_SCHEMA = pa.schema([
    ("pair_id", pa.string()), ("split", pa.string()), ("kind", pa.string()),  # kind: quality | interest
    ("product_a", pa.string()), ("product_b", pa.string()),
    ("image_a", pa.binary()), ("image_b", pa.binary()),  # JPEG bytes of both creatives
    ("interest", pa.string()), ("label", pa.string()),  # label: A | B, the better creative
    ("defect", pa.string()),  # the defect of the worse creative (quality pairs; null for interest pairs)
    ("reason", pa.string()),  # JSON: the reason the winner wins (rationale.render_rationale renders it)
    ("rationale", pa.string()), ("answer", pa.string()),  # reference rationale; <think>…</think><answer>X</answer>
])
LABEL_NOTE = ("Labels come from construction: a quality pair's winner is the catalog image and its loser a "
              "degraded copy; an interest pair's winner is the product whose attributes the interest text was "
              "built from. No human judged these pairs.")


def split_counts(available: dict[str, int], total: int) -> dict[str, int]:
    """`total` pairs shared out in proportion to each split's products (largest remainder), at least one
    per non-empty split when there are enough pairs, never more than the split's products."""
    n_all = sum(available.values())
    if n_all == 0:
        raise ValueError("the catalog has no products")
    exact = {s: total * n / n_all for s, n in available.items()}
    out = {s: int(v) for s, v in exact.items()}
    for s in sorted(exact, key=lambda s: exact[s] - out[s], reverse=True)[: total - sum(out.values())]:
        out[s] += 1
    if total >= len([s for s in available if available[s]]):
        for s in available:
            if available[s] and out[s] == 0:
                out[max(out, key=out.get)] -= 1
                out[s] = 1
    return {s: min(out[s], available[s]) for s in available}


class _Distractors:
    """Products of one split grouped by attributes, to find an interest pair's loser quickly."""

    def __init__(self, rows: list[dict], members: list[int]):
        self.rows = rows
        self.groups: dict[tuple, list[int]] = collections.defaultdict(list)
        for i in members:
            self.groups[tuple(rows[i].get(a) for a in INTEREST_ATTRS)].append(i)
        self.cache: dict[tuple, list[int]] = {}

    def find(self, target: dict, named: list[str], mismatch: str, rng: np.random.Generator) -> int | None:
        """A product differing from `target` in `mismatch` (both known), equal in the other named
        attributes when one exists, else differing in `mismatch` only."""
        same = tuple((a, target[a]) for a in named if a != mismatch)
        for key in ((mismatch, target[mismatch], same), (mismatch, target[mismatch], ())):
            if key not in self.cache:
                self.cache[key] = [i for g, ids in self.groups.items() if self._fits(g, *key) for i in ids]
            if self.cache[key]:
                return self.cache[key][int(rng.integers(len(self.cache[key])))]
        return None

    @staticmethod
    def _fits(group: tuple, mismatch: str, want, same: tuple) -> bool:
        attrs = dict(zip(INTEREST_ATTRS, group, strict=True))
        return attrs[mismatch] is not None and attrs[mismatch] != want and all(attrs[a] == v for a, v in same)


def plan_pairs(rows: list[dict], cfg: CreativePairsConfig) -> list[dict]:
    """The pairs to render: one plan row per pair (product indices into `rows`, kind, defect, interest,
    reason, the winner's position and the seed of its image operation). Deterministic in cfg.seed."""
    members = {s: [i for i, r in enumerate(rows) if r["split"] == s] for s in SPLITS}
    counts = split_counts({s: len(m) for s, m in members.items()}, min(cfg.limit or cfg.num_pairs, cfg.num_pairs))
    plan = []
    for k, split in enumerate(SPLITS):
        rng = np.random.default_rng([cfg.seed, k])
        finder = _Distractors(rows, members[split])
        for n, i in enumerate(rng.permutation(members[split])[: counts[split]].tolist()):
            plan.append(_plan_one(rows, int(i), finder, cfg, rng) | {"pair_id": f"{split}-{n:05d}", "split": split})
    return plan


def _plan_one(rows: list[dict], i: int, finder: _Distractors, cfg: CreativePairsConfig, rng) -> dict:
    target = rows[i]
    named = [a for a in ("article_type", "colour") if target.get(a)]
    named += [a for a in ("gender", "usage") if target.get(a) and rng.random() < 0.5]
    interest = interest_text({a: target[a] for a in named}, rng)
    good = "A" if rng.random() < 0.5 else "B"
    seed = int(rng.integers(2**31))
    visible = [a for a in VISIBLE_ATTRS if a in named]
    other = None
    if visible and rng.random() >= cfg.quality_share:
        mismatch = visible[int(rng.integers(len(visible)))]
        other = finder.find(target, named, mismatch, rng)
    if other is None:  # a quality pair (also when no product can lose the interest pair)
        defect = cfg.defects[int(rng.integers(len(cfg.defects)))]
        reason = {"kind": "quality", "defect": defect, "product": describe(target)}
        return {"kind": "quality", "target": i, "other": -1, "defect": defect, "interest": interest,
                "good": good, "seed": seed, "reason": reason}
    loser = rows[other]
    wrong = [a for a in INTEREST_ATTRS if a in named and loser[a] != target[a]]  # `mismatch` and any other
    reason = {"kind": "interest", "interest": interest, "good": describe(target), "other": describe(loser),
              "mismatch": wrong, "want": {a: target[a] for a in wrong}, "got": {a: loser[a] or "none" for a in wrong}}
    return {"kind": "interest", "target": i, "other": other, "defect": None, "interest": interest,
            "good": good, "seed": seed, "reason": reason}


def plan_table(plan: list[dict], products: pa.Table) -> pa.Table:
    """The plan as Arrow rows carrying the winner's and (interest pairs) the loser's catalog image."""
    ids, images = products.column("id").to_pylist(), products.column("image")
    target = pa.array([p["target"] for p in plan], pa.int64())
    other = pa.array([max(p["other"], 0) for p in plan], pa.int64())
    return pa.table({
        "position": pa.array(range(len(plan)), pa.int64()),
        "pair_id": [p["pair_id"] for p in plan], "split": [p["split"] for p in plan],
        "kind": [p["kind"] for p in plan], "defect": pa.array([p["defect"] for p in plan], pa.string()),
        "interest": [p["interest"] for p in plan], "good": [p["good"] for p in plan],
        "seed": pa.array([p["seed"] for p in plan], pa.int64()),
        "reason": [json.dumps(p["reason"]) for p in plan],
        "id_good": [ids[p["target"]] for p in plan], "id_other": [ids[p["other"]] if p["other"] >= 0 else "" for p in plan],
        "image_good": images.take(target), "image_other": images.take(other),
    })


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def render_pair(row: dict, jpeg_quality: int) -> dict:
    """One plan row -> one PAIR_SCHEMA row (both creatives re-encoded the same way)."""
    winner = Image.open(io.BytesIO(row["image_good"])).convert("RGB")
    if row["kind"] == "quality":
        loser, loser_id = apply_defect(row["defect"], winner, np.random.default_rng(row["seed"])), row["id_good"]
    else:
        loser, loser_id = Image.open(io.BytesIO(row["image_other"])).convert("RGB"), row["id_other"]
    good, reason = row["good"], json.loads(row["reason"])
    win, lose = (_jpeg(winner, jpeg_quality), row["id_good"]), (_jpeg(loser, jpeg_quality), loser_id)
    (img_a, id_a), (img_b, id_b) = (win, lose) if good == "A" else (lose, win)
    return {"pair_id": row["pair_id"], "split": row["split"], "kind": row["kind"], "product_a": id_a,
            "product_b": id_b, "image_a": img_a, "image_b": img_b, "interest": row["interest"], "label": good,
            "defect": row["defect"], "reason": row["reason"], "rationale": render_rationale(reason, good),
            "answer": target_answer(reason, good)}


def render_and_write(batch: pa.Table, out_dir: str, jpeg_quality: int) -> pa.Table:
    """Ray Data task: render a block of plan rows, write them per split, return them without images."""
    rows = [render_pair(r, jpeg_quality) for r in batch.to_pylist()]
    first = batch.column("position")[0].as_py() if batch.num_rows else 0
    table = pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)
    for split in sorted(set(table.column("split").to_pylist())):
        part = table.filter(pac.equal(table.column("split"), split))
        pq.write_table(part, f"{out_dir}/{split}/part-{first:06d}.parquet")
    return table.drop_columns(["image_a", "image_b"])


def read_products(catalog_dir: Path) -> pa.Table:
    products = catalog_dir / "products"
    if not products.exists():
        raise FileNotFoundError(f"{products} does not exist: run `moon-ray preprocess data.output_dir={catalog_dir}` first")
    return pq.ParquetDataset(products).read(columns=[*ATTR_COLUMNS, "image"])


def build_pairs(cfg: Config) -> dict:
    """The whole job; returns the stats (also written to creative.pairs.output_dir/stats.json)."""
    from moon_ray.infrastructure.runtime import init_ray
    from moon_ray.infrastructure.timing import Stopwatch

    clock, pc = Stopwatch(), cfg.creative.pairs
    products = read_products(Path(cfg.data.output_dir))
    plan = plan_pairs(products.select(ATTR_COLUMNS).to_pylist(), pc)
    table = plan_table(plan, products)
    out = Path(pc.output_dir)
    for split in SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)
        (out / split).mkdir(parents=True, exist_ok=True)
    ray = init_ray(cfg.ray)
    blocks = [table.slice(i, pc.rows_per_block) for i in range(0, table.num_rows, pc.rows_per_block)]
    done = ray.data.from_arrow(blocks).map_batches(
        render_and_write, batch_format="pyarrow", batch_size=None, num_cpus=1,
        fn_kwargs={"out_dir": str(out.resolve()), "jpeg_quality": pc.jpeg_quality})
    meta = pa.concat_tables(ray.get(done.to_arrow_refs()))
    written = sum(pq.ParquetDataset(out / s).read(columns=["pair_id"]).num_rows for s in SPLITS if any((out / s).iterdir()))
    if meta.num_rows != len(plan) or written != len(plan):
        raise RuntimeError(f"planned {len(plan)} pairs, rendered {meta.num_rows}, {written} on disk")
    stats = summarise(meta) | {"seconds": round(clock.elapsed(), 1), "output_dir": str(out), "labels": LABEL_NOTE,
                               "catalog": str(cfg.data.output_dir), "seed": pc.seed}
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    return stats


def summarise(meta: pa.Table) -> dict:
    rows = meta.to_pylist()
    count = collections.Counter
    products = {s: {r[k] for r in rows if r["split"] == s for k in ("product_a", "product_b")} for s in SPLITS}
    overlap = sum(len(products[a] & products[b]) for a, b in (("train", "val"), ("train", "test"), ("val", "test")))
    return {
        "pairs": len(rows),
        "splits": {s: dict(count(r["kind"] for r in rows if r["split"] == s)) for s in SPLITS},
        "defects": dict(count(r["defect"] for r in rows if r["kind"] == "quality").most_common()),
        "interest_mismatch": dict(count("+".join(json.loads(r["reason"])["mismatch"]) for r in rows
                                       if r["kind"] == "interest").most_common()),
        "labels_A_share": round(sum(r["label"] == "A" for r in rows) / max(1, len(rows)), 4),
        "products_shared_between_splits": overlap,
    }


def read_pairs(pairs_dir: str | Path, split: str, limit: int | None = None, columns: list[str] | None = None) -> pa.Table:
    """One split of a built pairs dataset (in pair-id order), at most `limit` pairs."""
    folder = Path(pairs_dir) / split
    if not folder.is_dir() or not any(folder.glob("*.parquet")):
        raise FileNotFoundError(f"{folder} has no pairs: run `moon-ray creative pairs` first "
                                f"(creative.pairs.output_dir={pairs_dir})")
    table = pq.ParquetDataset(folder).read(columns=columns).sort_by("pair_id")
    return table.slice(0, limit) if limit is not None else table
