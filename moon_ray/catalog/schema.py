"""Arrow schemas of the preprocessing outputs (documented in README "Catalog shards").

products/*.parquet — one row per valid product:

| column          | type          | meaning                                                        |
| --------------- | ------------- | -------------------------------------------------------------- |
| id              | string        | product id (as text)                                           |
| row             | int64         | 0-based data row in the input table                            |
| title           | string        | cleaned title (NFKC, HTML removed, whitespace collapsed)       |
| image           | binary        | JPEG, RGB, `preprocess.image.size` square                      |
| image_width     | int32         | original width                                                 |
| image_height    | int32         | original height                                                |
| image_mode      | string        | original PIL mode (RGB, L, CMYK, RGBA, P, ...)                 |
| brand           | string?       | entity: brand (column, learned title prefix, or pre-gender words) |
| category_path   | list<string>  | entity: [master category, sub category, article type]         |
| master_category | string?       | cleaned column                                                 |
| sub_category    | string?       | cleaned column                                                 |
| article_type    | string?       | cleaned column                                                 |
| colour          | string?       | entity: colour column, else colour phrase in the title         |
| material        | string?       | entity: material column, else material word in the title       |
| gender          | string?       | entity: gender column, else gender word in the title           |
| season          | string?       | cleaned column                                                 |
| usage           | string?       | cleaned column                                                 |
| year            | int32?        | cleaned column                                                 |
| split           | string        | train / val / test, from a salted hash of the id               |

rejects/*.parquet — one row per rejected input row, nothing dropped silently:

| column      | type   | meaning                                                       |
| ----------- | ------ | ------------------------------------------------------------- |
| row         | int64  | 0-based data row in the input table (-1: unparseable CSV line) |
| id          | string?| the id as read, if any                                        |
| reason_code | string | e.g. image_corrupt, duplicate_id, missing_field               |
| reason      | string | the code plus detail ("image_too_small: 1x1 (min side 32)")  |
| raw         | string | JSON of the original cells (binary cells as their length)     |

queries/<split>.parquet — text queries derived from attributes, for evaluation:

| column        | type          | meaning                                          |
| ------------- | ------------- | ------------------------------------------------ |
| query_id      | string        | "<split>-<n>"                                    |
| text          | string        | e.g. "Men Navy Blue Shirts"                      |
| gender        | string        | attribute values the query names                 |
| colour        | string        |                                                  |
| article_type  | string        |                                                  |
| relevant_ids  | list<string>  | every product of the split matching all three    |
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

PRODUCT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("row", pa.int64()),
        ("title", pa.string()),
        ("image", pa.binary()),
        ("image_width", pa.int32()),
        ("image_height", pa.int32()),
        ("image_mode", pa.string()),
        ("brand", pa.string()),
        ("category_path", pa.list_(pa.string())),
        ("master_category", pa.string()),
        ("sub_category", pa.string()),
        ("article_type", pa.string()),
        ("colour", pa.string()),
        ("material", pa.string()),
        ("gender", pa.string()),
        ("season", pa.string()),
        ("usage", pa.string()),
        ("year", pa.int32()),
        ("split", pa.string()),
    ],
    metadata={"moon_ray.schema_version": str(SCHEMA_VERSION)},
)

REJECT_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("id", pa.string()),
        ("reason_code", pa.string()),
        ("reason", pa.string()),
        ("raw", pa.string()),
    ]
)

QUERY_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("text", pa.string()),
        ("gender", pa.string()),
        ("colour", pa.string()),
        ("article_type", pa.string()),
        ("relevant_ids", pa.list_(pa.string())),
    ]
)

# A processed batch carries both kinds of row: product columns plus the reject columns.
PROCESSED_SCHEMA = pa.schema(
    list(PRODUCT_SCHEMA) + [f for f in REJECT_SCHEMA if f.name not in ("row", "id")]
)
