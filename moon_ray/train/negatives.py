"""The reward's hard-negative bank: catalog products that are hard for the current model.

    bank = NegativeBank.from_catalog(cfg)                  # rollout.bank_size products of the train split
    if bank.due(step): bank.refresh(model, step)           # trace-free embeddings, FAISS flat index
    rows = bank.candidates(plain, ids, article_types)      # per batch: nearest neighbours + same category

The bank holds `rollout.bank_size` products of the train split (a seeded sample, the same on every
rank) with their catalog fields. Every `rollout.bank_refresh` steps the current model embeds them
(image + title, no trace; with several DDP ranks each embeds a slice and the slices are all-gathered)
into a FAISS inner-product index. For a batch, each product contributes its `rollout.bank_neighbours`
nearest bank products (searched with its own trace-free embedding) and `rollout.bank_same_category`
bank products of its article type; a product is never its own negative (same id). The union is
what every trace of the batch is scored against, next to the batch itself (train/joint.py).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from moon_ray.catalog.rationales import FIELDS, product_fields
from moon_ray.config import Config
from moon_ray.infrastructure.index import build_index, search


class NegativeBank:
    def __init__(self, rows: dict, neighbours: int, same_category: int, refresh_every: int, seed: int = 0):
        self.ids = [str(i) for i in rows["id"]]
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("NegativeBank: product ids must be unique")
        self.images, self.titles = list(rows["image"]), [str(t) for t in rows["title"]]
        self.fields = product_fields(rows)
        self.neighbours, self.same_category, self.refresh_every = neighbours, same_category, refresh_every
        self.by_type: dict[str, list[int]] = {}
        for i, f in enumerate(self.fields):
            self.by_type.setdefault(str(f["article_type"]).lower(), []).append(i)
        self.rng = random.Random(seed)
        self.embeddings: torch.Tensor | None = None  # (M, D) unit rows, trace-free
        self.index = None
        self.version = -1  # the step of the last refresh

    @classmethod
    def from_catalog(cls, cfg: Config) -> NegativeBank | None:
        """`rollout.bank_size` train products of the catalog under data.output_dir (None when 0)."""
        r = cfg.rollout
        if r.bank_size == 0:
            return None
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        products = Path(cfg.data.output_dir) / "products"
        schema = pq.read_schema(next(products.glob("*.parquet")))
        columns = ["id", "title", "image", "split", *[f for f in FIELDS if f in schema.names]]
        table = pq.read_table(products, columns=columns)
        table = table.filter(pc.equal(table["split"], "train"))
        if table.num_rows == 0:
            raise ValueError(f"rollout.bank_size: no train products under {products}")
        picks = sorted(random.Random(cfg.train.seed).sample(range(table.num_rows), min(r.bank_size, table.num_rows)))
        return cls(table.take(picks).to_pydict(), r.bank_neighbours, r.bank_same_category, r.bank_refresh,
                   seed=cfg.train.seed)

    def __len__(self) -> int:
        return len(self.ids)

    def due(self, step: int) -> bool:
        return self.embeddings is None or step - self.version >= self.refresh_every

    @torch.no_grad()
    def refresh(self, model, step: int, batch_size: int = 16) -> dict:
        """Embed the bank with `model` (image + title, no trace) and rebuild the index."""
        import torch.distributed as dist

        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        rank = dist.get_rank() if world > 1 else 0
        per = -(-len(self) // world)
        mine = range(rank * per, min(len(self), (rank + 1) * per))
        parts = []
        for s in range(mine.start, mine.stop, batch_size):
            e = min(mine.stop, s + batch_size)
            out = model(pixels=model.pixels(self.images[s:e]), texts=self.titles[s:e], modality="multimodal")
            parts.append(out.embedding.float())
        dim = model.cfg.embed_dim if hasattr(model, "cfg") else parts[0].shape[1]
        local = torch.cat(parts) if parts else torch.zeros(0, dim, device=model.device)
        if world > 1:
            padded = torch.zeros(per, local.shape[1], device=local.device)
            padded[: local.shape[0]] = local
            gathered = [torch.empty_like(padded) for _ in range(world)]
            dist.all_gather(gathered, padded)
            local = torch.cat(gathered)[: len(self)]
        self.set_embeddings(local, step)
        return {"bank_size": float(len(self)), "bank_version": float(step)}

    def set_embeddings(self, embeddings: torch.Tensor, step: int) -> None:
        """(M, D) unit rows of the bank's products (as refresh computes them)."""
        if embeddings.shape[0] != len(self):
            raise ValueError(f"NegativeBank: {embeddings.shape[0]} embeddings for {len(self)} products")
        self.embeddings = embeddings.detach()
        self.index = build_index(embeddings.detach().cpu().numpy(), kind="flat", use_gpu=False)
        self.version = step

    def candidates(self, plain: torch.Tensor, ids: list[str], article_types: list[str | None]) -> list[int]:
        """Bank rows to score this batch against: for each product, its nearest bank neighbours under
        `plain` (B, D) trace-free unit embeddings and same-article-type bank products, never the
        product itself. Sorted, without duplicates."""
        if self.index is None:
            raise RuntimeError("NegativeBank.candidates before refresh")
        k = min(len(self), self.neighbours + 1)  # one more: the product itself may be in the bank
        picked: set[int] = set()
        if self.neighbours > 0:
            _, found = search(self.index, plain.detach().float().cpu().numpy(), k)
            for pid, row in zip(ids, found, strict=True):
                picked.update([int(j) for j in row if j >= 0 and self.ids[j] != str(pid)][: self.neighbours])
        for pid, kind in zip(ids, article_types, strict=True):
            pool = [j for j in self.by_type.get(str(kind).lower(), []) if self.ids[j] != str(pid)]
            picked.update(self.rng.sample(pool, min(self.same_category, len(pool))))
        return sorted(picked)

    def rows(self, idx: list[int]) -> tuple[torch.Tensor, list[str], list[dict]]:
        """(len(idx), D) embeddings, ids and catalog fields of bank rows idx."""
        if self.embeddings is None:
            raise RuntimeError("NegativeBank.rows before refresh")
        sel = torch.tensor(idx, dtype=torch.long, device=self.embeddings.device)
        return self.embeddings.index_select(0, sel), [self.ids[i] for i in idx], [self.fields[i] for i in idx]

