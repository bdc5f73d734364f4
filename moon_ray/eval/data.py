"""The evaluation set: one split of the preprocessed catalog, its text queries, and the encode requests.

    data = load_split(cfg)                        # products of cfg.eval.split (+ its text queries)
    requests, parts = build_requests(data, cfg.eval.zero_shot)

Products come from `cfg.data.output_dir`/products (catalog order, the first `eval.limit` of the
split), queries from queries/<split>.parquet; with a limit, each query keeps the relevant products
that remain and a query left with none is dropped. Each query also gets a held-out wording
(moon_ray/catalog/wording.py: an order, synonyms and forms the training sampler never writes, seeded by
`eval.seed` and the query id), never equal to a training wording of any of its relevant products. `build_requests` lists every input the encoder has
to embed, in named parts (a slice each):

| part            | image                  | text                         | used by                     |
| --------------- | ---------------------- | ---------------------------- | --------------------------- |
| product         | product image          | title                        | the index; zero-shot (mm)   |
|                 | (`Encoder.encode_products`; every other part goes through `Encoder.encode`)        |
| text_query      | —                      | "Men Navy Blue Shirts"       | text → product (template)   |
| text_unseen     | —                      | "navy shirt for gents"       | text → product (primary)    |
| image_degraded  | degrade(image, seed, id) | —                          | image → product (same)      |
| image           | product image          | —                            | similar products; zero-shot |
| image_text      | degrade(image, seed, id) | "Navy Blue Shirts"         | image+text → product        |
| label/<field>   | —                      | each distinct value          | zero-shot label prompts     |
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from moon_ray.catalog.wording import training_wordings, unseen_wording
from moon_ray.config import Config, ConfigError

PRODUCT_COLUMNS = ("id", "row", "title", "image", "gender", "colour", "article_type", "season", "usage",
                   "master_category", "sub_category", "material", "brand")
TRACE_COLUMN = "reasoning"  # a stored trace per product, written into the shards by `moon-ray traces`
TRACE_VERSION_COLUMN = "reasoning_version"  # the policy version that generated it
TRACE_COLUMNS = (TRACE_COLUMN, TRACE_VERSION_COLUMN)


@dataclass
class EvalSet:
    """The products of one split (parallel lists) and its text queries."""

    split: str
    products: dict[str, list]  # column -> values, PRODUCT_COLUMNS
    queries: list[str]  # the training template: "Men Navy Blue Shirts"
    query_relevant: list[list[int]]  # product indices per query
    unseen_queries: list[str] = dataclasses.field(default_factory=list)  # the same queries in held-out wordings

    @property
    def size(self) -> int:
        return len(self.products["id"])


def read_products(root: str | Path, columns: Sequence[str], split: str | None, limit: int | None, field: str,
                  hint: str, optional: Sequence[str] = ()) -> pa.Table:
    """`columns` (and those of `optional` the shards have) of the products of `split` (None: every split)
    under root/products, in catalog order, the first `limit`; errors name the missing catalog or `field`."""
    import pyarrow.dataset as ds

    products_dir = Path(root) / "products"
    if not products_dir.is_dir() or not any(products_dir.glob("*.parquet")):
        raise FileNotFoundError(f"no preprocessed catalog at {products_dir}: {hint}")
    dataset = ds.dataset(products_dir, format="parquet")
    wanted = sorted({*columns, "row", *(c for c in optional if c in dataset.schema.names)})
    table = dataset.to_table(columns=wanted, filter=(ds.field("split") == split) if split else None)
    if table.num_rows == 0:
        found = sorted(set(dataset.to_table(columns=["split"]).column("split").to_pylist()))
        raise ConfigError(f"{field}: no products in split {split!r} under {products_dir} (splits: {found})")
    table = table.sort_by("row")
    return table.slice(0, limit) if limit is not None else table


def load_split(cfg: Config) -> EvalSet:
    """The products of `cfg.eval.split` (with their stored traces, if the shards have any) and its queries;
    a clear error when preprocessing has not run."""
    import pyarrow.parquet as pq

    root = Path(cfg.data.output_dir)
    hint = f"run `moon-ray preprocess data.output_dir={root}` first"
    split = cfg.eval.split
    table = read_products(root, PRODUCT_COLUMNS, split, cfg.eval.limit, "eval.split", hint, optional=TRACE_COLUMNS)
    products = table.to_pydict()
    query_path = root / "queries" / f"{split}.parquet"
    if not query_path.exists():
        raise FileNotFoundError(f"no text queries at {query_path}: {hint}")
    columns = ["query_id", "text", "gender", "colour", "article_type", "relevant_ids"]
    queries = pq.read_table(query_path, columns=columns).to_pylist()
    position = {pid: i for i, pid in enumerate(products["id"])}
    texts, relevant, unseen = [], [], []
    for q in queries:
        rel = sorted(position[p] for p in q["relevant_ids"] if p in position)
        if rel:
            texts.append(q["text"])
            relevant.append(rel)
            unseen.append(held_out_wording(q, rel, products, cfg.eval.seed))
    return EvalSet(split=split, products=products, queries=texts, query_relevant=relevant, unseen_queries=unseen)


def held_out_wording(query: dict, relevant: list[int], products: dict[str, list], seed: int) -> str:
    """The query in a wording the training sampler cannot write for any of its relevant products."""
    forbidden: set[str] = set()
    for i in relevant:
        forbidden |= training_wordings(*(products[f][i] for f in ("brand", "gender", "colour", "article_type")))
    return unseen_wording(query["gender"], query["colour"], query["article_type"], query["query_id"], seed, forbidden)


def phrase(colour: str | None, article_type: str | None) -> str:
    """The short attribute phrase of an image+text query: 'Navy Blue Shirts'."""
    return " ".join(p for p in (colour, article_type) if p)


def labels_of(values: list[str | None]) -> list[str]:
    """The distinct non-empty values, sorted: the label set of a zero-shot field."""
    return sorted({v for v in values if v})


def build_requests(data: EvalSet, fields: tuple[str, ...]) -> tuple[pa.Table, dict[str, slice]]:
    """The request table (row, image, text, degrade, product) and the slice of rows of each part."""
    p = data.products
    n = data.size
    parts: list[tuple[str, list, list, list]] = [
        ("product", p["image"], p["title"], [None] * n),
        ("text_query", [None] * len(data.queries), data.queries, [None] * len(data.queries)),
        ("text_unseen", [None] * len(data.unseen_queries), data.unseen_queries, [None] * len(data.unseen_queries)),
        ("image_degraded", p["image"], [None] * n, p["id"]),
        ("image", p["image"], [None] * n, [None] * n),
        ("image_text", p["image"], [phrase(c, a) or None for c, a in zip(p["colour"], p["article_type"], strict=True)],
         p["id"]),
    ]
    for field in fields:
        labels = labels_of(p[field])
        parts.append((f"label/{field}", [None] * len(labels), labels, [None] * len(labels)))
    slices: dict[str, slice] = {}
    images, texts, keys = [], [], []
    for name, im, tx, key in parts:
        slices[name] = slice(len(images), len(images) + len(im))
        images += im
        texts += tx
        keys += key
    table = pa.table({"row": pa.array(range(len(images)), pa.int64()), "image": pa.array(images, pa.binary()),
                      "text": pa.array(texts, pa.string()), "degrade": pa.array(keys, pa.string()),
                      "product": pa.array([i < n for i in range(len(images))], pa.bool_())})
    return table, slices
