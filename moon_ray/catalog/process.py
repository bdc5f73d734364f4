"""The per-batch work of preprocessing: one input batch -> product rows and reject rows.

`process_batch` is what Ray Data runs in `map_batches`, and what the single-process benchmark loop
runs too, so both do exactly the same work.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields

import pyarrow as pa

from moon_ray.catalog import images, text
from moon_ray.catalog.entities import Gazetteer, extract
from moon_ray.catalog.read import DUP_OF, ROW
from moon_ray.catalog.schema import PROCESSED_SCHEMA
from moon_ray.catalog.splits import split_of
from moon_ray.config import ColumnMap, Config

TEXT_FIELDS = [f.name for f in fields(ColumnMap) if f.name != "image"]


class RowReject(ValueError):
    """A row-level problem; `str(e)` is 'reason_code: detail'."""


def process_batch(batch: pa.Table, cfg: Config, gazetteer: Gazetteer) -> pa.Table:
    """Rows of PROCESSED_SCHEMA: products have reason_code null, rejects have it set."""
    rows = batch.to_pylist()
    out = [process_row(r, cfg, gazetteer) for r in rows]
    return pa.Table.from_pylist(out, schema=PROCESSED_SCHEMA)


def process_row(row: dict, cfg: Config, gaz: Gazetteer) -> dict:
    cols = cfg.data.columns
    rid = _raw_id(row.get(cols.id))
    try:
        if row[DUP_OF] >= 0:
            raise RowReject(f"duplicate_id: id {rid!r} already at row {row[DUP_OF]}")
        f = clean_fields(row, cols, cfg.data.required)
        image = images.process(image_bytes(row, f["id"], cfg), cfg.preprocess.image)
    except (RowReject, text.TextError, images.ImageReject) as e:
        return _reject(row, rid, str(e), cols)
    out = {"id": f["id"], "row": row[ROW], "title": f["title"], **image}
    out.update({k: f.get(k) for k in ("master_category", "sub_category", "article_type")})
    out.update(extract(f, gaz))
    out["year"] = _year(f.get("year"))
    out["split"] = split_of(f["id"], cfg.preprocess.split)
    return out


def clean_fields(row: dict, cols: ColumnMap, required: tuple[str, ...]) -> dict[str, str | None]:
    """Decode (strict UTF-8), normalise and check the mapped text fields of one row."""
    out: dict[str, str | None] = {}
    for name in TEXT_FIELDS:
        column = getattr(cols, name)
        if column is None:
            out[name] = None
            continue
        value = text.normalise(text.decode(row.get(column), column))
        out[name] = None if text.is_missing(value) else value
    for name in required:
        if not out.get(name):
            code = "empty_title" if name == "title" else "missing_field"
            raise RowReject(f"{code}: {name} (column {getattr(cols, name)!r}) is empty")
    return out


def image_bytes(row: dict, product_id: str, cfg: Config) -> bytes:
    """The image's bytes from the image column (bytes or a path) or from image_dir/image_pattern."""
    column = cfg.data.columns.image
    limit = cfg.preprocess.image.max_bytes
    if column is None:
        name = cfg.data.image_pattern.format(id=product_id)
        return images.read_bytes(os.path.join(cfg.data.image_dir, name), limit)
    value = row.get(column)
    if value is None or len(value) == 0:
        raise images.ImageReject(f"image_missing: column {column!r} is empty")
    if isinstance(value, str) or _looks_like_path(value):
        path = value if isinstance(value, str) else value.decode("utf-8", errors="strict")
        return images.read_bytes(os.path.join(cfg.data.image_dir, path.strip()), limit)
    return bytes(value)


def _looks_like_path(value: bytes) -> bool:
    return len(value) < 4096 and not value[:8].startswith((b"\xff\xd8", b"\x89PNG", b"GIF8", b"RIFF", b"BM", b"II*", b"MM\x00")) and b"\x00" not in value[:256]


def _year(value: str | None) -> int | None:
    try:
        year = int(float(value)) if value else None
    except ValueError:
        return None
    return year if year and 1800 < year < 2200 else None


def _raw_id(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace").strip()
    return str(value).strip()


def _reject(row: dict, rid: str | None, reason: str, cols: ColumnMap) -> dict:
    raw = {}
    for k, v in row.items():
        if k in (ROW, DUP_OF):
            continue
        if isinstance(v, bytes):
            v = f"<{len(v)} bytes>" if k == cols.image else v.decode("utf-8", errors="backslashreplace")
        raw[k] = v
    return {
        "id": rid,
        "row": row[ROW],
        "reason_code": reason.split(":", 1)[0],
        "reason": reason,
        "raw": json.dumps(raw, ensure_ascii=False, default=str),
    }
