"""`moon-ray coaugment`: MOON2.0 co-augmentation of a catalog split (Section 12), a Ray Data job that
stores, per product, an *enriched title* written by the rollout LM from the image and the title, and
*visual expansions* of the product shot made by image operations (catalog/expansions.py).

    moon-ray coaugment --split train --limit 200 --title-limit 32        # SmolLM2 of the config, torch engine
    moon-ray coaugment --model outputs/train/export --views 4            # an export's LM and projector
    moon-ray train train.coaugment=true                                  # training samples them

Enriched titles: the products go through Ray Data `map_batches` over `rollout.num_workers` actors of
`rollout.cpus_per_worker` CPUs (`rollout.gpus_per_worker` GPUs), `--batch-size` products a call. Each
actor builds the embedder (the config's, or `--model`'s export) and has its language model write,
greedily, at most `--max-tokens` tokens after a prompt of the visual tokens and the title (the chat
template and image placeholder of models/reasoning.py, with the REWRITE instruction below) whose answer
already starts with the title: the model continues it with what it adds. `enriched_title` keeps the
addition only when it is usable (a new word beyond the title and the instruction, not too long, no
repeated word);
otherwise the product's enriched title is None (attempted at that version, nothing usable). Greedy
generation runs in transformers (`generate` with `inputs_embeds`) on the actor: the rollout engines,
vLLM among them, live on a higher floor (moon_ray/floors.py) than the catalog, which may not call them.
The text goes into the product shards as `enriched_title` with `enriched_title_version`: the model's
weights, model config, prompt and token budget hashed, so a title is never mistaken for another
model's (as `moon-ray traces` stores `reasoning_version`).

Visual expansions: `--views` per product (kinds cycling through subject, background, angle, detail,
each seeded by the product's row), stored as JPEG bytes in `expansions` (list<binary>) with their kinds
in `expansion_kinds`. Training does not read them: it draws fresh expansions on the fly with the same
functions (about 10 ms a view on one core against seconds a step, and a new draw every epoch rather
than a fixed few). The stored ones are for looking at, and for evaluating robustness to them.

Products outside the slice keep what their shards had; each shard is written beside itself (a dot
file, which readers skip) and renamed over it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from moon_ray.catalog.expansions import KINDS, expand
from moon_ray.catalog.images import encode_jpeg
from moon_ray.config import Config, ConfigError

ROOT = Path(__file__).resolve().parents[2]
ENRICHED, ENRICHED_VERSION = "enriched_title", "enriched_title_version"
EXPANSIONS, EXPANSION_KINDS = "expansions", "expansion_kinds"
REWRITE = (
    "{image}Product: {title}\n"
    "Describe this product for a shop's search in a few words: its material, pattern, fit, style and use."
)
ANSWER = "{title}, "  # the answer starts with the title: the model continues it with what it adds
JPEG_QUALITY = 90
MAX_ADDED = 16  # words an enriched title may add to the title
GATE = 2  # the rule of `enriched_title`, part of the version: bump it when the rule changes


# ---------------------------------------------------------------------------------------- the prompt
def enrich_prompt_embeds(model, pixels, titles: list[str]):
    """(B, L, H) left-padded prompt embeddings and (B, L) mask: the reasoning chat template with the
    REWRITE instruction; visual tokens at the image placeholder (pixels None: a text-only prompt)."""
    import torch

    from moon_ray.models.language import decoder
    from moon_ray.models.reasoning import IMAGE_PLACEHOLDER, SYSTEM

    tok, embed = model.tokenizer, decoder(model.lm).embed_tokens
    vis = model.visual_tokens(pixels) if pixels is not None else None
    rows = []
    for i, title in enumerate(titles):
        user = REWRITE.format(image=IMAGE_PLACEHOLDER + "\n" if vis is not None else "", title=title)
        text = tok.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
                                       tokenize=False, add_generation_prompt=True) + ANSWER.format(title=title)
        pieces = text.split(IMAGE_PLACEHOLDER) if vis is not None else [text]
        parts = [embed(torch.tensor(tok(pieces[0], add_special_tokens=False)["input_ids"], device=model.device))]
        if vis is not None:
            parts += [vis[i], embed(torch.tensor(tok(pieces[1], add_special_tokens=False)["input_ids"],
                                                 device=model.device))]
        rows.append(torch.cat(parts, dim=0))
    longest = max(r.shape[0] for r in rows)
    embeds = rows[0].new_zeros(len(rows), longest, rows[0].shape[1])
    mask = torch.zeros(len(rows), longest, dtype=torch.long, device=embeds.device)
    for i, r in enumerate(rows):
        embeds[i, longest - r.shape[0] :], mask[i, longest - r.shape[0] :] = r, 1
    return embeds, mask


def enriched_title(title: str, continuation: str) -> str | None:
    """The title with what the model added after it (its first line, to the first sentence end), or None
    when the addition is not usable: no new word (a word of 3+ letters in neither the title nor the
    instruction: numbers and echoed instruction words do not count), more than MAX_ADDED words, or a
    repeated word (a number or a word of 4+ letters twice, any word three times)."""
    line = next((ln.strip() for ln in continuation.splitlines() if ln.strip()), "")
    line = re.split(r"(?<=[a-z0-9])[.!?](\s|$)", line)[0].strip(" ,;:-\"'*")
    added = re.findall(r"[a-z0-9]+", line.lower())
    new = {w for w in added if len(w) >= 3 and w.isalpha()} - words(title) - words(REWRITE)
    if not new or len(added) > MAX_ADDED:
        return None
    if any(added.count(w) >= (2 if len(w) >= 4 or w.isdigit() else 3) for w in added):
        return None
    return f"{title}, {line}"


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def enrich_titles(model, images: list[bytes], titles: list[str], max_tokens: int,
                  with_image: bool) -> list[str | None]:
    """One greedy enriched title per product from the embedder's language model (None: not usable)."""
    import torch

    from moon_ray.models.language import causal_lm

    with torch.no_grad():
        embeds, mask = enrich_prompt_embeds(model, model.pixels(images) if with_image else None, titles)
        out = causal_lm(model.lm).generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_tokens,
                                           do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
    return [enriched_title(title, t) for title, t in
            zip(titles, model.tokenizer.batch_decode(out, skip_special_tokens=True), strict=True)]


# ---------------------------------------------------------------------------------- model and version
def load_model(cfg: Config, model_dir: str | None, device: str = "cpu"):
    """The embedder whose LM writes the titles: `model_dir`'s export, else the one `cfg.model` builds."""
    import torch

    if model_dir:
        from moon_ray.models.export import load_exported

        return load_exported(Path(model_dir), device)[0]
    from moon_ray.models.factory import build_embedder

    return build_embedder(cfg).to(torch.device(device)).eval()


def model_version(cfg: Config, model_dir: str | None, max_tokens: int, with_image: bool) -> str:
    """`<name>@<16 hex>`: what decides a title (model config and seed, or an export's config and weight
    files; the prompt; the usability rule; the token budget; image on or off) hashed."""
    what = {"prompt": REWRITE, "answer": ANSWER, "gate": GATE, "max_tokens": max_tokens, "image": with_image}
    h = hashlib.sha256(json.dumps(what).encode())
    if model_dir:
        path = Path(model_dir)
        files = [path / "config.yaml", path / "trainable.safetensors", *sorted((path / "adapter").glob("*"))]
        for f in (f for f in files if f.is_file()):
            h.update(f.name.encode())
            with f.open("rb") as fh:
                while chunk := fh.read(1 << 22):
                    h.update(chunk)
        name = path.parent.name if path.name == "export" else path.name
    else:
        h.update(json.dumps({"model": dataclasses.asdict(cfg.model), "seed": cfg.train.seed}, default=str).encode())
        name = "tiny-lm" if cfg.model.lm.tiny else Path(cfg.model.lm.path or "smollm2").name
    return f"{name}@{h.hexdigest()[:16]}"


class EnrichActor:
    """Ray Data actor: the embedder; a batch (row, image, title) -> (row, enriched)."""

    def __init__(self, cfg: Config, model_dir: str | None, max_tokens: int, with_image: bool, device: str):
        import torch

        torch.set_num_threads(max(1, cfg.rollout.threads))
        self.model, self.max_tokens, self.with_image = load_model(cfg, model_dir, device), max_tokens, with_image

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        titles = enrich_titles(self.model, batch.column("image").to_pylist(), batch.column("title").to_pylist(),
                               self.max_tokens, self.with_image)
        # "" for a title that is not usable: Ray Data's blocks would turn None into NaN
        return {"row": batch.column("row").to_numpy(), "enriched": np.array([t or "" for t in titles], dtype=object)}


# ------------------------------------------------------------------------------------------ expansions
def expansions_of(image: bytes, row: int, views: int, seed: int) -> tuple[list[bytes], list[str]]:
    """`views` expansions of one product (kinds cycle through KINDS), seeded by (seed, row)."""
    rng = random.Random(seed * 1_000_003 + row)
    kinds = [KINDS[k % len(KINDS)] for k in range(views)]
    return [encode_jpeg(expand(image, kind, rng), JPEG_QUALITY) for kind in kinds], kinds


def expand_batch(batch: pa.Table, views: int, seed: int) -> pa.Table:
    """Ray Data task: (row, image) -> (row, expansions, expansion_kinds)."""
    made = [expansions_of(im, r, views, seed)
            for im, r in zip(batch.column("image").to_pylist(), batch.column("row").to_pylist(), strict=True)]
    return pa.table({"row": batch.column("row"), EXPANSIONS: pa.array([m[0] for m in made], pa.list_(pa.binary())),
                     EXPANSION_KINDS: pa.array([m[1] for m in made], pa.list_(pa.string()))})


# ----------------------------------------------------------------------------------------------- the job
def read_split(catalog: str | Path, split: str, limit: int | None) -> pa.Table:
    """(row, image, title) of `split`'s products in catalog order, the first `limit` of them."""
    import pyarrow.dataset as ds

    products = Path(catalog) / "products"
    if not products.exists():
        raise FileNotFoundError(f"{products} does not exist: run `moon-ray preprocess` first")
    table = ds.dataset(products, format="parquet").to_table(columns=["row", "image", "title"],
                                                            filter=ds.field("split") == split)
    if table.num_rows == 0:
        raise ConfigError(f"--split: the catalog at {catalog} has no products in split {split!r}")
    table = table.sort_by("row")
    return table.slice(0, limit) if limit is not None else table


def blocks(table: pa.Table, batch: int, workers: int) -> list[pa.Table]:
    """About 4 blocks per worker, whole batches each."""
    per_block = batch * max(1, -(-table.num_rows // (4 * workers * batch)))
    return [table.slice(i, per_block) for i in range(0, table.num_rows, per_block)]


def generate_titles(cfg: Config, table: pa.Table, model_dir: str | None, max_tokens: int, with_image: bool,
                    batch: int) -> dict[int, str | None]:
    """{catalog row: enriched title, None where the model's was not usable} of `table`'s products on
    `rollout.num_workers` actors."""
    import ray

    from moon_ray.infrastructure.resources import ROLLOUT, request

    r = cfg.rollout
    extra = {"num_gpus": r.gpus_per_worker} if r.gpus_per_worker else {}
    ds = ray.data.from_arrow(blocks(table, batch, r.num_workers)).map_batches(
        EnrichActor, fn_constructor_kwargs={"cfg": cfg, "model_dir": model_dir, "max_tokens": max_tokens,
                                            "with_image": with_image, "device": "cuda" if r.gpus_per_worker else "cpu"},
        batch_size=batch, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=r.num_workers),
        num_cpus=r.cpus_per_worker, resources=request(ROLLOUT, cfg.ray.use_custom_resources), **extra)
    titles = {int(row): str(t) or None for b in ds.iter_batches(batch_format="numpy", batch_size=None)
              for row, t in zip(b["row"], b["enriched"], strict=True)}
    if len(titles) != table.num_rows:
        raise RuntimeError(f"the coaugment job lost products: {table.num_rows - len(titles)} came back without a title")
    return titles


def make_expansions(table: pa.Table, views: int, seed: int) -> dict[int, tuple[list[bytes], list[str]]]:
    """{catalog row: (JPEG expansions, kinds)} in Ray Data tasks."""
    import ray

    ds = ray.data.from_arrow(blocks(table.select(["row", "image"]), 16, int(ray.cluster_resources().get("CPU", 1))))
    ds = ds.map_batches(expand_batch, fn_kwargs={"views": views, "seed": seed}, batch_format="pyarrow", batch_size=16)
    out = {}
    for b in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        for row, ims, kinds in zip(*(b.column(c).to_pylist() for c in ("row", EXPANSIONS, EXPANSION_KINDS)), strict=True):
            out[int(row)] = (ims, kinds)
    return out


def write_columns(catalog: str | Path, columns: dict[str, tuple[pa.DataType, dict[int, object]]]) -> int:
    """Set `columns` (name -> (type, {catalog row: value})) in the product shards; rows not given keep their
    value (None where the column is new). Returns the number of rows given a value in any column."""
    import pyarrow.parquet as pq

    written = 0
    for shard in sorted((Path(catalog) / "products").glob("*.parquet")):
        table = pq.read_table(shard)
        rows = table.column("row").to_pylist()
        written += sum(any(r in values for _, values in columns.values()) for r in rows)
        for name, (kind, values) in columns.items():
            old = table.column(name).to_pylist() if name in table.column_names else [None] * len(rows)
            new = pa.array([values.get(r, o) for r, o in zip(rows, old, strict=True)], kind)
            table = table.drop_columns([name]) if name in table.column_names else table
            table = table.append_column(name, new)
        tmp = shard.with_name(f".{shard.name}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, shard)
    return written


@dataclasses.dataclass(frozen=True)
class CoaugmentJob:
    split: str = "train"
    limit: int | None = None  # products of the split (catalog order) that get expansions
    title_limit: int | None = None  # of those, the first N also get an enriched title (None: all)
    views: int = 4
    model: str | None = None  # an export directory; None: the embedder cfg.model builds
    max_tokens: int = 40
    batch_size: int = 8
    with_image: bool = True

    def validate(self) -> None:
        for name in ("limit", "title_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("views", "max_tokens", "batch_size"):
            if getattr(self, name) < (0 if name == "views" else 1):
                raise ConfigError(f"--{name.replace('_', '-')} must be >= {0 if name == 'views' else 1}")
        if self.model and not Path(self.model).is_dir():
            raise ConfigError(f"--model: {self.model} is not an export directory")


def run_coaugment(cfg: Config, job: CoaugmentJob) -> dict:
    """Enriched titles and expansions of the split's slice, stored in the shards; a summary with timings."""
    from moon_ray.infrastructure.runtime import init_ray
    from moon_ray.infrastructure.timing import Stopwatch

    job.validate()
    table = read_split(cfg.data.output_dir, job.split, job.limit)
    n_titles = table.num_rows if job.title_limit is None else min(job.title_limit, table.num_rows)
    init_ray(cfg.ray)
    version = model_version(cfg, job.model, job.max_tokens, job.with_image) if n_titles else None
    clock = Stopwatch()
    titles = generate_titles(cfg, table.slice(0, n_titles), job.model, job.max_tokens, job.with_image,
                             job.batch_size) if n_titles else {}
    title_s, clock = clock.elapsed(), Stopwatch()
    views = make_expansions(table, job.views, cfg.train.seed) if job.views else {}
    view_s = clock.elapsed()
    columns = {}
    if titles:
        columns |= {ENRICHED: (pa.string(), titles), ENRICHED_VERSION: (pa.string(), dict.fromkeys(titles, version))}
    if views:
        columns |= {EXPANSIONS: (pa.list_(pa.binary()), {r: v[0] for r, v in views.items()}),
                    EXPANSION_KINDS: (pa.list_(pa.string()), {r: v[1] for r, v in views.items()})}
    written = write_columns(cfg.data.output_dir, columns) if columns else 0
    return {"split": job.split, "products": table.num_rows, "written": written, "titles": len(titles),
            "titles_usable": sum(t is not None for t in titles.values()),
            "title_version": version, "title_seconds": round(title_s, 1), "expanded": len(views),
            "views_per_product": job.views, "expansion_seconds": round(view_s, 1),
            "catalog": str(Path(cfg.data.output_dir).resolve())}


# ------------------------------------------------------------------------------------------------ CLI
def add_coaugment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="train", help="catalog split to co-augment (default train)")
    p.add_argument("--limit", type=int, help="the first N products of the split (catalog order); default all")
    p.add_argument("--title-limit", type=int, help="of those, the first N get an enriched title (generation is "
                   "slow on CPUs); default all")
    p.add_argument("--views", type=int, default=4, help="visual expansions stored per product (0: none)")
    p.add_argument("--model", help="an exported model whose LM and projector write the titles (default: the "
                   "embedder the config builds: pretrained LM, untrained projector)")
    p.add_argument("--max-tokens", type=int, default=40, help="new tokens per enriched title")
    p.add_argument("--batch-size", type=int, default=8, help="products per generation call")
    p.add_argument("--text-only", action="store_true", help="prompt with the title alone (no visual tokens)")


def cli_coaugment(args) -> int:
    """`moon-ray coaugment [--split S] [--limit N] [--title-limit M] [--views K] [--model EXPORT] [overrides]`."""
    from moon_ray.config import absolute_path, load_config, with_absolute_paths

    cfg = with_absolute_paths(load_config(args.config, list(args.overrides)), ["data.output_dir"], search=[ROOT])
    model = absolute_path(args.model, search=[ROOT]) if args.model else None
    out = run_coaugment(cfg, CoaugmentJob(split=args.split, limit=args.limit, title_limit=args.title_limit,
                                          views=args.views, model=model, max_tokens=args.max_tokens,
                                          batch_size=args.batch_size, with_image=not args.text_only))
    print(f"co-augmented {out['products']} {out['split']} products in {out['catalog']}/products: "
          f"{out['titles_usable']} of {out['titles']} enriched titles usable ({ENRICHED}, version "
          f"{out['title_version']}; the rest None) in {out['title_seconds']:.0f} s, "
          f"{out['views_per_product']} expansions each for {out['expanded']} ({EXPANSIONS}) in "
          f"{out['expansion_seconds']:.0f} s\ntrain with them: moon-ray train train.coaugment=true")
    return 0
