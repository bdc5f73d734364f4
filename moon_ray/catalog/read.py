"""Reading the product table (CSV / Parquet / JSONL) with row numbers, malformed lines and duplicates.

The table (text columns, not images) is read once on the driver with pyarrow's multithreaded readers;
the per-row work (decoding, cleaning, images, entities) then runs in Ray Data tasks. CSV cells are read
as raw bytes so that invalid UTF-8 rejects one row with its reason instead of failing the file.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from moon_ray.config import ColumnMap, ConfigError, DataConfig

ROW = "_row"
DUP_OF = "_dup_of"


@dataclass
class RawTable:
    """The input rows plus `_row` (0-based data row) and `_dup_of` (first row with the same id, or -1)."""

    table: pa.Table
    malformed: list[dict] = field(default_factory=list)  # reject rows for unparseable CSV lines
    source: str = ""

    @property
    def num_input(self) -> int:
        return self.table.num_rows + len(self.malformed)


def table_format(cfg: DataConfig) -> str:
    if cfg.format != "auto":
        return cfg.format
    suffix = Path(cfg.catalog).suffix.lower()
    fmt = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}.get(suffix)
    if fmt is None:
        raise ConfigError(f"data.catalog: cannot tell the format of {cfg.catalog!r}; set data.format")
    return fmt


def read_table(cfg: DataConfig) -> RawTable:
    path = Path(cfg.catalog)
    if not path.exists():
        raise FileNotFoundError(f"data.catalog: {path} does not exist (cwd: {Path.cwd()})")
    fmt = table_format(cfg)
    malformed: list[dict] = []
    if fmt == "csv":
        table = _read_csv(path, malformed)
    elif fmt == "parquet":
        table = pq.read_table(path)
    else:
        table = pajson.read_json(path)
    check_columns(cfg.columns, table.column_names, path)
    if cfg.limit is not None:
        table = table.slice(0, cfg.limit)
    table = table.append_column(ROW, pa.array(range(table.num_rows), pa.int64()))
    table = table.append_column(DUP_OF, pa.array(first_occurrence(table.column(cfg.columns.id)), pa.int64()))
    return RawTable(table=table, malformed=malformed, source=str(path))


def _read_csv(path: Path, malformed: list[dict]) -> pa.Table:
    with open(path, "rb") as fh:
        header_line = fh.readline().decode("utf-8-sig", errors="replace")
    header = next(csv.reader([header_line]))

    def on_bad_row(row) -> str:
        malformed.append(
            {
                "row": -1,
                "id": None,
                "reason_code": "malformed_row",
                "reason": f"malformed_row: line {row.number}: expected {row.expected_columns} "
                f"columns, got {row.actual_columns}",
                "raw": json.dumps({"line": row.text}),
            }
        )
        return "skip"

    return pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(use_threads=False, column_names=header, skip_rows=1),
        parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_bad_row),
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.binary() for name in header}, strings_can_be_null=False
        ),
    )


def check_columns(columns: ColumnMap, present: list[str], path: Path) -> None:
    for f in fields(ColumnMap):
        name = getattr(columns, f.name)
        if name is not None and name not in present:
            raise ConfigError(
                f"data.columns.{f.name} = {name!r} is not a column of {path.name} "
                f"(columns: {', '.join(present)}); map it or set it to null"
            )


def first_occurrence(ids: pa.ChunkedArray) -> list[int]:
    """For each row, the index of the first earlier row with the same (stripped) id, else -1."""
    seen: dict = {}
    out = []
    for i, value in enumerate(ids.to_pylist()):
        key = value.strip() if isinstance(value, (bytes, str)) else value
        if key is None or key in (b"", ""):
            out.append(-1)
            continue
        first = seen.setdefault(key, i)
        out.append(first if first != i else -1)
    return out
