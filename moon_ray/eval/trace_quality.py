"""Trace quality: do reasoning traces say something, or copy the title and repeat themselves?

    trace_quality(traces, titles, fields)   # dict of the metrics below, each in [0, 1]
    moon-ray trace-quality --model outputs/train/export [--split val] [--limit 32]

- `distinct_1`, `distinct_2`: distinct word uni-/bigrams over all n-grams of the sample (higher: more
  varied wording across products).
- `repetition`: mean over traces of the share of words that repeat an earlier word of the same trace.
- `title_copy`: share of traces with no word beyond the title's.
- `adds_attribute`: share of traces that state a catalog attribute of *their* product (season, usage,
  colour, gender, type, material) that the title does not state: what a trace can add.
- `wrong_attribute`: share of traces that state a value of an attribute (colour, season, usage, gender
  seen in the sample) that their product does not have.
- `words`: mean words per trace.

Joint training logs these over its traces every step (`trace_*`); the CLI measures a model's greedy
traces (the serving rule, models/reasoning.py) on a few products, e.g. before and after the SFT stage.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from moon_ray.catalog.rationales import mentions, stems

ADDED = ("gender", "colour", "season", "usage", "article_type", "material")
CHECKED = ("colour", "season", "usage", "gender")


def _ngrams(w: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]


def trace_quality(traces: Sequence[str], titles: Sequence[str], fields: Sequence[dict]) -> dict[str, float]:
    """Metrics of `traces` (one per product) given each product's title and catalog fields."""
    if not (len(traces) == len(titles) == len(fields)):
        raise ValueError(f"trace_quality: {len(traces)} traces, {len(titles)} titles, {len(fields)} field rows")
    if not traces:
        raise ValueError("trace_quality: no traces")
    words = [stems(t) for t in traces]
    out = {}
    for n in (1, 2):
        grams = [g for w in words for g in _ngrams(w, n)]
        out[f"distinct_{n}"] = len(set(grams)) / len(grams) if grams else 0.0
    out["repetition"] = sum(1 - len(set(w)) / len(w) if w else 0.0 for w in words) / len(words)
    out["title_copy"] = sum(set(w) <= set(stems(t)) for w, t in zip(words, titles, strict=True)) / len(words)
    vocab = {f: {row[f] for row in fields if row.get(f)} for f in CHECKED}
    adds = wrong = 0
    for trace, title, row in zip(traces, titles, fields, strict=True):
        adds += any(row.get(f) and not mentions(title, row[f]) and mentions(trace, row[f]) for f in ADDED)
        wrong += any(_states_other(trace, row.get(f), vocab[f]) for f in CHECKED)
    out["adds_attribute"] = adds / len(traces)
    out["wrong_attribute"] = wrong / len(traces)
    out["words"] = sum(len(w) for w in words) / len(words)
    return out


def _states_other(trace: str, own: str | None, values: set[str]) -> bool:
    """The trace names a value of this attribute that is not the product's own (nor part of it:
    'Blue' inside 'Navy Blue' is the product's colour)."""
    return any(v != own and not (own and mentions(own, v)) and mentions(trace, v) for v in values)


def sample_products(data_dir: str, split: str, limit: int, seed: int = 0) -> dict:
    """`limit` products of `split` (seeded sample) as a column dict with images and catalog fields."""
    import random
    from pathlib import Path

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from moon_ray.catalog.rationales import FIELDS

    table = pq.read_table(Path(data_dir) / "products", columns=["id", "title", "image", *FIELDS, "split"])
    table = table.filter(pc.equal(table["split"], split))
    if table.num_rows == 0:
        raise ValueError(f"--split: no {split!r} products under {data_dir}/products")
    picks = sorted(random.Random(seed).sample(range(table.num_rows), min(limit, table.num_rows)))
    return table.take(picks).to_pydict()


def add_trace_quality_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="an exported model directory (moon-ray train's export)")
    p.add_argument("--split", default="val", help="catalog split to sample (default: val)")
    p.add_argument("--limit", type=int, default=32, help="products to generate traces for (default: 32)")
    p.add_argument("--show", type=int, default=3, help="print this many traces beside their titles")


def cli_trace_quality(args) -> int:
    """`moon-ray trace-quality --model DIR`: greedy traces of a few products and their metrics (JSON)."""
    import json
    from pathlib import Path

    import torch

    from moon_ray.catalog.rationales import product_fields
    from moon_ray.config import load_config
    from moon_ray.models.export import load_exported
    from moon_ray.models.reasoning import generate_reasoning

    cfg = load_config(args.config, list(args.overrides))
    if args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    model, model_cfg = load_exported(Path(args.model))
    rows = sample_products(cfg.data.output_dir, args.split, args.limit, cfg.train.seed)
    traces = []
    with torch.no_grad():
        for i in range(0, len(rows["title"]), 8):
            pixels = model.pixels(rows["image"][i : i + 8])
            traces += generate_reasoning(model, pixels, rows["title"][i : i + 8],
                                         max_new_tokens=model_cfg.rollout.max_tokens)
    metrics = trace_quality(traces, rows["title"], product_fields(rows))
    for title, trace in list(zip(rows["title"], traces, strict=True))[: args.show]:
        print(f"{title!r} -> {trace!r}")
    print(json.dumps({"model": args.model, "split": args.split, "products": len(traces), **metrics}, indent=1))
    return 0
