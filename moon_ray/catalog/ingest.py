"""Catalog preprocessing on Ray Data: read -> validate/clean/entities/images -> shards + rejects + stats.

    moon-ray preprocess [--config pipelines/configs/default.yaml] [data.limit=500 ...]

Outputs under `data.output_dir`: products/ and rejects/ (Parquet, schemas in `catalog/schema.py`),
queries/<split>.parquet, gazetteer.json, stats.json and config.yaml. `input = ok + rejected` is checked
and a mismatch is an error.
"""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

from moon_ray.catalog.entities import Gazetteer
from moon_ray.catalog.process import process_batch
from moon_ray.catalog.read import ROW, RawTable, read_table
from moon_ray.catalog.schema import PRODUCT_SCHEMA, REJECT_SCHEMA
from moon_ray.catalog.splits import SPLITS, derive_queries
from moon_ray.catalog.text import normalise
from moon_ray.config import Config, to_dict
from moon_ray.infrastructure.runtime import cluster_cpus, init_ray
from moon_ray.infrastructure.timing import Stopwatch


class CountMismatch(RuntimeError):
    """input != ok + rejected: a row was lost or duplicated."""


def learn_gazetteer(raw: RawTable, cfg: Config) -> Gazetteer:
    cols = cfg.data.columns

    def texts(column: str | None) -> list[str]:
        if column is None:
            return []
        values = raw.table.column(column).to_pylist()
        return [normalise(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v or "")) for v in values]

    return Gazetteer.learn(
        texts(cols.title), texts(cols.colour),
        min_support=cfg.preprocess.brand_min_support, extend_ratio=cfg.preprocess.brand_extend_ratio,
    )


def split_blocks(table: pa.Table, n: int) -> list[pa.Table]:
    n = max(1, min(n, table.num_rows or 1))
    step = -(-table.num_rows // n) or 1
    return [table.slice(i, step) for i in range(0, max(table.num_rows, 1), step)]


def process_and_write(batch: pa.Table, cfg: Config, gazetteer: Gazetteer, products_dir: str) -> pa.Table:
    """Process one batch, write its valid rows as a product shard, return every row without images.

    The shard is named by the batch's first input row, so a retried task overwrites its own file
    instead of duplicating rows; images never travel through the object store.
    """
    table = process_batch(batch, cfg, gazetteer)
    ok = table.filter(pc.is_null(table["reason_code"])).select(PRODUCT_SCHEMA.names)
    if ok.num_rows:
        fs, root = pafs.FileSystem.from_uri(products_dir) if "://" in products_dir else (None, products_dir)
        first = batch[ROW][0].as_py() if batch.num_rows else 0
        pq.write_table(ok.replace_schema_metadata(PRODUCT_SCHEMA.metadata), f"{root}/part-{first:010d}.parquet", filesystem=fs)
    return table.drop_columns(["image"])


def run_preprocess(cfg: Config) -> dict:
    """The whole job; returns the stats dict (also written to stats.json)."""
    clock = Stopwatch()
    raw = read_table(cfg.data)
    gaz = learn_gazetteer(raw, cfg)
    init_ray(cfg.ray)
    import ray

    out = prepare_output(Path(cfg.data.output_dir))
    pp = cfg.preprocess
    n_blocks = pp.num_blocks or max(int(4 * cluster_cpus()), -(-raw.table.num_rows // pp.rows_per_shard))
    processed = ray.data.from_arrow(split_blocks(raw.table, n_blocks)).map_batches(
        process_and_write, batch_format="pyarrow", batch_size=pp.batch_size, num_cpus=1,
        fn_kwargs={"cfg": cfg, "gazetteer": gaz, "products_dir": str(out / "products")},
    )
    small = pa.concat_tables(ray.get(processed.to_arrow_refs()))
    t_process = clock.elapsed()
    ok_mask = pc.is_null(small["reason_code"])
    n_ok = int(pc.sum(ok_mask).as_py() or 0)
    if n_ok == 0:
        pq.write_table(PRODUCT_SCHEMA.empty_table(), out / "products" / "part-empty.parquet")
    rejects_table = pa.concat_tables(
        [small.filter(pc.invert(ok_mask)).select(REJECT_SCHEMA.names).cast(REJECT_SCHEMA),
         pa.Table.from_pylist(raw.malformed, schema=REJECT_SCHEMA)]
    )
    pq.write_table(rejects_table, out / "rejects" / "rejects-00000.parquet")
    written = pq.ParquetDataset(out / "products").read(columns=["id"]).num_rows
    if written != n_ok:
        raise CountMismatch(f"{written} product rows on disk, {n_ok} processed as valid")
    stats = summarise(raw, n_ok, rejects_table, small.filter(ok_mask), cfg, out)
    stats["seconds"] = {"process": round(t_process, 2), "total": round(clock.elapsed(), 2)}
    (out / "gazetteer.json").write_text(gaz.to_json())
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return stats


def prepare_output(out: Path) -> Path:
    for sub in ("products", "rejects", "queries"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True, exist_ok=True)
    return out


def summarise(raw: RawTable, n_ok: int, rejects: pa.Table, keys: pa.Table, cfg: Config, out: Path) -> dict:
    n_rej = rejects.num_rows
    if raw.num_input != n_ok + n_rej:
        raise CountMismatch(f"input {raw.num_input} != ok {n_ok} + rejected {n_rej}")
    by_split = collections.Counter(keys.column("split").to_pylist())
    queries = {}
    for split in SPLITS:
        q = derive_queries(keys, split, cfg.preprocess.query_min_relevant)
        pq.write_table(q, out / "queries" / f"{split}.parquet")
        queries[split] = q.num_rows
    return {
        "source": raw.source,
        "input": raw.num_input,
        "ok": n_ok,
        "rejected": n_rej,
        "reject_reasons": dict(collections.Counter(rejects.column("reason_code").to_pylist()).most_common()),
        "splits": {s: by_split.get(s, 0) for s in SPLITS},
        "queries": queries,
        "output_dir": str(out),
        "schema_version": PRODUCT_SCHEMA.metadata[b"moon_ray.schema_version"].decode(),
    }
