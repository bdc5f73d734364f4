"""Config sections for the catalog, its preprocessing and the Ray runtime."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from moon_ray.configlib import ConfigError, opt


# --------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class ColumnMap:
    """Which input column holds each product field. `None` means the catalog has no such column."""

    id: str = opt("id", "Unique product id column.")
    title: str = opt("productDisplayName", "Product title column.")
    gender: str | None = opt("gender", "Gender / target audience column.")
    master_category: str | None = opt("masterCategory", "Top-level category column.")
    sub_category: str | None = opt("subCategory", "Second-level category column.")
    article_type: str | None = opt("articleType", "Leaf category (article type) column.")
    colour: str | None = opt("baseColour", "Base colour column.")
    season: str | None = opt("season", "Season column.")
    year: str | None = opt("year", "Year column.")
    usage: str | None = opt("usage", "Usage / occasion column.")
    brand: str | None = opt(None, "Brand column; when absent the brand is taken from the title prefix.")
    material: str | None = opt(None, "Material column; when absent it is extracted from the title.")
    image: str | None = opt(
        None,
        "Column holding each product's image as a path (absolute or relative to data.image_dir) "
        "or as raw bytes. When None, images are found as data.image_dir/data.image_pattern.",
    )


@dataclass(frozen=True)
class DataConfig:
    catalog: str = opt(
        "../shared/data/fashion-products/styles.csv",
        "Product table: a .csv, .parquet or .jsonl file (relative paths resolve against the "
        "current directory).",
    )
    format: str = opt("auto", "Table format: auto (from the file suffix), csv, parquet or jsonl.")
    image_dir: str = opt("../shared/data/fashion-products/images", "Directory holding the images.")
    image_pattern: str = opt("{id}.jpg", "Image file name pattern inside image_dir; {id} is the id.")
    columns: ColumnMap = opt(ColumnMap(), "Mapping from product fields to input columns.")
    required: tuple[str, ...] = opt(
        ("id", "title", "article_type"),
        "Product fields that must be present and non-empty; a row missing one is rejected.",
    )
    limit: int | None = opt(None, "Keep only the first N rows of the table (None: all).")
    output_dir: str = opt("outputs/catalog", "Where preprocessing writes shards, rejects and stats.")

    def validate(self) -> None:
        if self.format not in ("auto", "csv", "parquet", "jsonl"):
            raise ConfigError(f"data.format: expected auto, csv, parquet or jsonl, got {self.format!r}")
        known = {f.name for f in dataclasses.fields(ColumnMap)}
        bad = [r for r in self.required if r not in known]
        if bad:
            raise ConfigError(f"data.required: unknown field {bad[0]!r} (known: {', '.join(sorted(known))})")
        if self.limit is not None and self.limit < 0:
            raise ConfigError("data.limit must be >= 0")


@dataclass(frozen=True)
class ImageConfig:
    size: int = opt(224, "Side of the square output image (the vision encoder's resolution).")
    resize_mode: str = opt(
        "pad", "pad: fit inside and pad with white; crop: centre crop; stretch: ignore aspect."
    )
    jpeg_quality: int = opt(95, "JPEG quality of the stored, resized image.")
    min_side: int = opt(32, "Images with a side shorter than this are rejected as too small.")
    max_pixels: int = opt(
        40_000_000,
        "Images whose header declares more pixels are rejected before decoding (decompression bomb).",
    )
    max_bytes: int = opt(30_000_000, "Image files larger than this many bytes are rejected.")

    def validate(self) -> None:
        if self.resize_mode not in ("pad", "crop", "stretch"):
            raise ConfigError(
                f"preprocess.image.resize_mode: expected pad, crop or stretch, got {self.resize_mode!r}"
            )
        if self.size < 8 or self.min_side < 1:
            raise ConfigError("preprocess.image.size must be >= 8 and min_side >= 1")


@dataclass(frozen=True)
class SplitConfig:
    train: float = opt(0.80, "Fraction of products in the train split.")
    val: float = opt(0.04, "Fraction of products in the validation split.")
    test: float = opt(0.16, "Fraction of products in the held-out test split.")
    seed: str = opt("moon-ray", "Salt of the id hash; the same seed gives the same split.")

    def validate(self) -> None:
        parts = (self.train, self.val, self.test)
        if min(parts) < 0 or abs(sum(parts) - 1.0) > 1e-6:
            raise ConfigError(f"preprocess.split: fractions must be >= 0 and sum to 1, got {parts}")


@dataclass(frozen=True)
class PreprocessConfig:
    image: ImageConfig = opt(ImageConfig(), "Image decoding and resizing.")
    split: SplitConfig = opt(SplitConfig(), "Deterministic train/val/test split by id hash.")
    batch_size: int | None = opt(
        None, "Rows per map_batches call (None: a whole block, one product shard per block)."
    )
    num_blocks: int | None = opt(
        None, "Ray Data blocks to split the table into (None: 4 per CPU, more if rows_per_shard needs)."
    )
    rows_per_shard: int = opt(2000, "At most this many rows per output Parquet shard (with batch_size None).")
    brand_min_support: int = opt(2, "A title prefix must start this many titles to be a brand.")
    brand_extend_ratio: float = opt(
        0.8,
        "A brand prefix is extended by the next word while the longer prefix keeps this share "
        "of the shorter one's products.",
    )
    query_min_relevant: int = opt(1, "A derived text query needs this many relevant products.")


# ---------------------------------------------------------------------------------------------- ray
@dataclass(frozen=True)
class RayConfig:
    address: str | None = opt(
        None, "Ray cluster address ('auto', 'ray://host:10001'); None starts a local Ray."
    )
    num_cpus: int | None = opt(None, "CPUs of a locally started Ray (None: this machine's).")
    namespace: str = opt("moon-ray", "Ray namespace for named actors.")
    progress: bool = opt(True, "Show Ray Data progress bars.")
    use_custom_resources: bool = opt(
        False,
        "Request the cluster's custom resources (moon_ray/infrastructure/resources.py: moon_trainer, moon_rollout, "
        "moon_serve, moon_data) so each role lands on its node group; off on a laptop.",
    )
