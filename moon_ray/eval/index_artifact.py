"""The catalog index as an artifact: a directory every Serve replica loads instead of embedding the catalog.

    identity = model_identity("outputs/train/export")       # what the vectors were made by
    write_index_dir(out, vectors, meta, manifest, faiss_index)
    manifest, vectors, meta = read_index_dir(out)
    check_identity(manifest, identity, out)                  # ConfigError when another model built it

| file             | content                                                                        |
| ---------------- | ------------------------------------------------------------------------------ |
| manifest.json    | format, model identity, dim, count, catalog slice, FAISS kind, trace policy    |
| vectors.npy      | float32 (N, dim) unit rows, in catalog order                                   |
| products.parquet | the products' metadata (META_COLUMNS; `reasoning` and its version if embedded) |
| index.faiss      | the FAISS index over the vectors, of the kind serve.index named at build time  |

Identity: vectors of two models share no space, so an index records who made it. An export is known by
a hash of its weights (trainable.safetensors, the PEFT adapter) and of the parts of its config.yaml that
decide a product's vector (the `model` section as written, rollout.enabled, rollout.max_tokens): not by
its path, which differs between the machine that built the index and a pod that mounts the same volume
elsewhere. A baseline is known by its name. Loading an index for another identity is a ConfigError
that says which model built it and how to rebuild it.

Traces (DESIGN.md, "the reasoning policy"): a model that reasons (an export trained with
rollout.enabled) embeds a product as image + title + a trace. When the product shards carry stored
traces (a `reasoning` column, with its policy version in `reasoning_version`), they are reused; products
without one get a greedy trace from the model itself (`generate_reasoning`, rollout.max_tokens), as
evaluation does. The manifest's `traces` says how many of each and the policy versions, and the traces
used are kept in products.parquet. Models that do not reason ignore stored traces.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from moon_ray.config import Config, ConfigError

FORMAT = 2
FILES = ("manifest.json", "vectors.npy", "products.parquet", "index.faiss")
META_COLUMNS = ("id", "title", "brand", "article_type", "colour", "gender", "season", "usage", "master_category",
                "sub_category", "material", "year", "split")
FILTER_FIELDS = ("id", "brand", "article_type", "colour", "gender", "season", "usage", "master_category",
                 "sub_category", "material", "split")
TRACE_COLUMN = "reasoning"  # a stored trace per product (issue 19's batch job writes it into the shards)
TRACE_VERSION_COLUMN = "reasoning_version"  # the policy version that generated it
log = logging.getLogger(__name__)


# -------------------------------------------------------------------------------------------- identity
def _sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def model_name(model: str) -> str:
    """A baseline's name, or an export's directory name (its parent's when the directory is `export`)."""
    path = Path(model)
    if not path.is_dir():
        return model
    path = path.resolve()
    return path.parent.name if path.name == "export" else path.name


def model_identity(model: str) -> dict:
    """Who makes the vectors: {"name", "kind", "path", "fingerprint", "config_hash", "step", "reasoning"}."""
    path = Path(model)
    if not path.is_dir():
        config_hash = _sha(json.dumps({"baseline": model}))
        return {"name": model, "kind": "baseline", "path": None, "fingerprint": _sha(f"baseline:{model}"),
                "config_hash": config_hash, "step": None, "reasoning": False}
    import yaml

    from moon_ray.models.export import MARKER

    if not (path / MARKER).exists():
        raise ConfigError(f"{path} is not an exported moon-ray model (no {MARKER}); export one with `moon-ray train`")
    raw = yaml.safe_load((path / "config.yaml").read_text()) or {}
    rollout = raw.get("rollout") or {}
    product_side = {"model": raw.get("model") or {}, "reasoning": bool(rollout.get("enabled", False)),
                    "max_tokens": rollout.get("max_tokens")}
    config_hash = _sha(json.dumps(product_side, sort_keys=True, default=str))
    weights = hashlib.sha256(config_hash.encode())
    files = [path / "trainable.safetensors", *sorted((path / "adapter").glob("*"))]
    for f in files:
        if f.is_file():
            weights.update(f.relative_to(path).as_posix().encode())
            with f.open("rb") as fh:
                while chunk := fh.read(1 << 22):
                    weights.update(chunk)
    marker = json.loads((path / MARKER).read_text())
    return {"name": model_name(model), "kind": "export", "path": str(path.resolve()),
            "fingerprint": weights.hexdigest(), "config_hash": config_hash, "step": marker.get("step"),
            "reasoning": product_side["reasoning"]}


def describe_identity(identity: dict) -> str:
    if identity.get("kind") == "baseline":
        return f"baseline {identity['name']!r}"
    return (f"export {identity['name']!r} (step {identity.get('step')}, weights {identity['fingerprint'][:12]}, "
            f"config {identity['config_hash'][:12]}, at {identity.get('path')})")


def check_identity(manifest: dict, identity: dict, where: str | Path, model_arg: str) -> None:
    """ConfigError unless the index at `where` was built by the model `identity` describes."""
    built = manifest.get("identity")
    fix = f"rebuild it: `moon-ray index --model {model_arg} --out {where}`"
    if manifest.get("format") != FORMAT or not isinstance(built, dict):
        raise ConfigError(f"{where} holds a catalog index of an older format (no model identity); {fix}")
    if built.get("fingerprint") != identity["fingerprint"] or built.get("config_hash") != identity["config_hash"]:
        raise ConfigError(
            f"the catalog index at {where} was built by {describe_identity(built)}, but this server serves "
            f"{describe_identity(identity)}: an index only answers for the model that embedded it. Either "
            f"{fix}, or set serve.index_dir to that model's index.")


# ------------------------------------------------------------------------------------------ locations
def default_index_dir(cfg: Config) -> Path:
    """Where an index of serve.model is looked for when serve.index_dir is unset: beside an export
    (`<export>-index`), or beside the catalog for a baseline (`<data.output_dir>/../index-<name>`)."""
    model = Path(cfg.serve.model)
    if model.is_dir() or "/" in cfg.serve.model:  # an export (a baseline is a bare name)
        model = model.resolve()
        return model.with_name(model.name + "-index")
    return Path(cfg.data.output_dir).resolve().parent / f"index-{cfg.serve.model}"


def index_location(cfg: Config) -> tuple[Path, bool]:
    """(the index directory to serve, whether serve.index_dir named it explicitly)."""
    if cfg.serve.index_dir:
        return Path(cfg.serve.index_dir), True
    return default_index_dir(cfg), False


def has_index(path: Path) -> bool:
    return (Path(path) / "manifest.json").is_file()


# ------------------------------------------------------------------------------------------- products
def load_products(cfg: Config):
    """The catalog's products to index (metadata, image, stored traces if any), in catalog order."""
    import pyarrow.dataset as ds

    products = Path(cfg.data.output_dir) / "products"
    if not products.is_dir() or not any(products.glob("*.parquet")):
        raise FileNotFoundError(f"no preprocessed catalog at {products}: run `moon-ray preprocess` first, point "
                                "data.output_dir at one, or set serve.index_limit=0 to serve embeddings only")
    dataset = ds.dataset(products, format="parquet")
    split = cfg.serve.index_split
    traces = [c for c in (TRACE_COLUMN, TRACE_VERSION_COLUMN) if c in dataset.schema.names]
    columns = sorted(set(META_COLUMNS) | {"row", "image", *traces})
    table = dataset.to_table(columns=columns, filter=(ds.field("split") == split) if split else None)
    if table.num_rows == 0:
        found = sorted(set(dataset.to_table(columns=["split"]).column("split").to_pylist()))
        raise ConfigError(f"serve.index_split: no products in split {split!r} under {products} (splits: {found})")
    table = table.sort_by("row")
    if cfg.serve.index_limit is not None:
        table = table.slice(0, cfg.serve.index_limit)
    return table


def catalog_fingerprint(catalog: str | Path) -> str | None:
    """A hash of the product shards' names and sizes (None when the catalog is not here)."""
    products = Path(catalog) / "products"
    shards = sorted(products.glob("*.parquet")) if products.is_dir() else []
    if not shards:
        return None
    return _sha(json.dumps([(p.name, p.stat().st_size) for p in shards]))[:16]


# ----------------------------------------------------------------------------------------- embedding
def product_encoder(model: str, device: str = "cpu", batch_size: int = 32):
    """The encoder that embeds products for serving: a baseline by name, or an export directory."""
    from moon_ray.models.encoder import get_encoder

    if model == "frozen":
        return get_encoder("frozen", device=device)
    if Path(model).is_dir():
        return get_encoder(model, device=device, batch_size=batch_size)
    return get_encoder(model)


def reasons(encoder) -> bool:
    """Whether `encoder` embeds products with a reasoning trace (an export trained with rollout.enabled)."""
    return bool(getattr(encoder, "reasoning", False)) and hasattr(getattr(encoder, "model", None), "lm")


def embed_products(encoder, images: Sequence[bytes], titles: Sequence[str],
                   traces: Sequence[str | None] | None = None) -> tuple[np.ndarray, list[str] | None]:
    """(float32 (N, dim) product vectors, the trace each was embedded with, or None for a model that does not
    reason). Stored traces are used as given; missing ones are generated greedily by the model itself."""
    if not reasons(encoder):
        return np.asarray(encoder.encode_products(list(images), list(titles)), dtype=np.float32), None
    import torch

    from moon_ray.models.reasoning import generate_reasoning

    model, n = encoder.model, len(titles)
    if any(img is None for img in images) or not all(titles):
        raise ValueError("a product needs both its image and its title to be embedded with a reasoning trace")
    used = [t or None for t in (traces if traces is not None else [None] * n)]
    out = np.zeros((n, encoder.dim), dtype=np.float32)
    with torch.no_grad():
        for s in range(0, n, encoder.batch_size):
            rows = list(range(s, min(n, s + encoder.batch_size)))
            pixels = model.pixels([images[i] for i in rows])
            words = [titles[i] for i in rows]
            missing = [j for j, i in enumerate(rows) if used[i] is None]
            if missing:
                made = generate_reasoning(model, pixels[missing], [words[j] for j in missing],
                                          max_new_tokens=encoder.cfg.rollout.max_tokens)
                for j, trace in zip(missing, made, strict=True):
                    used[rows[j]] = trace
            emb = model(pixels=pixels, texts=words, reasoning=[used[i] for i in rows], modality="multimodal",
                        is_query=False)
            out[s : s + len(rows)] = emb.embedding.float().cpu().numpy()
    return out, [t or "" for t in used]


# ------------------------------------------------------------------------------------- write and read
def make_manifest(cfg: Config, table, identity: dict, dim: int, traces: dict, built_by: str, seconds: float) -> dict:
    s, ix = cfg.serve, cfg.index
    return {
        "format": FORMAT, "identity": identity, "dim": int(dim), "count": int(table.num_rows),
        "catalog": {"dir": str(Path(cfg.data.output_dir).resolve()), "split": s.index_split, "limit": s.index_limit,
                    "shards": catalog_fingerprint(cfg.data.output_dir)},
        "faiss": {"kind": s.index, "hnsw_m": ix.hnsw_m, "hnsw_ef_construction": ix.hnsw_ef_construction},
        "traces": traces, "built_by": built_by, "seconds": round(seconds, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def trace_summary(table, used: list[str] | None, identity: dict, stored_mask: np.ndarray | None) -> dict:
    """What the manifest says about traces: embedded or not, stored vs generated, their policy versions."""
    if used is None:
        return {"embedded": False, "stored": 0, "generated": 0, "policy_versions": []}
    stored = int(stored_mask.sum()) if stored_mask is not None else 0
    versions = []
    if stored and TRACE_VERSION_COLUMN in table.column_names:
        column = table.column(TRACE_VERSION_COLUMN).to_pylist()
        versions = sorted({str(column[i]) for i in np.flatnonzero(stored_mask) if column[i] is not None})
    generated = len(used) - stored
    if generated:
        versions.append(f"generated:{identity['fingerprint'][:12]}")
    return {"embedded": True, "stored": stored, "generated": generated, "policy_versions": versions}


def stored_traces(table) -> tuple[list[str | None] | None, np.ndarray | None]:
    """The shards' stored traces (None where a product has none) and which products have one."""
    if TRACE_COLUMN not in table.column_names:
        return None, None
    traces = [t or None for t in table.column(TRACE_COLUMN).to_pylist()]
    return traces, np.array([t is not None for t in traces], dtype=bool)


def product_meta(table, used: list[str] | None) -> dict[str, list]:
    meta = table.select(list(META_COLUMNS)).to_pydict()
    if used is not None:
        meta[TRACE_COLUMN] = list(used)
    return meta


def write_index_dir(out: str | Path, vectors: np.ndarray, meta: dict[str, list], manifest: dict, index) -> Path:
    """Write the artifact to directory `out`, replacing it whole (written beside it, then renamed);
    `index` is a CPU FAISS index over `vectors`."""
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    from moon_ray.catalog.schema import PRODUCT_SCHEMA

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "vectors.npy", np.ascontiguousarray(vectors, dtype=np.float32))
    fields = [PRODUCT_SCHEMA.field(c) for c in META_COLUMNS]
    if TRACE_COLUMN in meta:
        fields.append(pa.field(TRACE_COLUMN, pa.string()))
    pq.write_table(pa.Table.from_pydict(meta, schema=pa.schema(fields)), tmp / "products.parquet")
    faiss.write_index(index, str(tmp / "index.faiss"))
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def read_manifest(path: str | Path) -> dict:
    root = Path(path)
    missing = [f for f in FILES if not (root / f).exists()]
    if missing:
        raise FileNotFoundError(f"{root} is not a catalog index (missing {', '.join(missing)}); build one with "
                                "`moon-ray index`")
    return json.loads((root / "manifest.json").read_text())


def read_index_dir(path: str | Path) -> tuple[dict, np.ndarray, dict[str, list]]:
    """(manifest, vectors, metadata) of a saved index; check its identity with `check_identity`."""
    import pyarrow.parquet as pq

    root = Path(path)
    manifest = read_manifest(root)
    vectors = np.load(root / "vectors.npy")
    meta = pq.read_table(root / "products.parquet").to_pydict()
    if vectors.shape != (manifest["count"], manifest["dim"]):
        raise ConfigError(f"{root}: vectors.npy has shape {vectors.shape}, the manifest says "
                          f"({manifest['count']}, {manifest['dim']}); rebuild it with `moon-ray index`")
    return manifest, vectors, meta


def faiss_index(vectors: np.ndarray, cfg: Config, root: Path | None = None, manifest: dict | None = None,
                use_gpu: bool | None = None):
    """The FAISS index for serve.index: the saved HNSW graph when it was built with the same parameters
    (building one takes seconds per 10k products), else built from the vectors (flat: instant)."""
    from moon_ray.infrastructure.index import build_index

    s, ix = cfg.serve, cfg.index
    saved = (manifest or {}).get("faiss", {})
    same = saved == {"kind": "hnsw", "hnsw_m": ix.hnsw_m, "hnsw_ef_construction": ix.hnsw_ef_construction}
    if s.index == "hnsw" and same and root is not None and (root / "index.faiss").exists():
        import faiss

        index = faiss.read_index(str(root / "index.faiss"))
        index.hnsw.efSearch = ix.hnsw_ef_search
        return index
    return build_index(vectors, s.index, ix.hnsw_m, ix.hnsw_ef_construction, ix.hnsw_ef_search, use_gpu=use_gpu)
