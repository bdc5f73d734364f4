"""One training step's forward: products and their three kinds of queries -> (losses, metrics).

`make_batch` turns a batch of catalog rows into model inputs (queries built per batch: a text query
from a random subset of the attributes, an augmented image view, image + short attribute phrase);
`training_forward` returns `(losses, metrics)`; the total loss is the sum of the `*_loss` entries.

Optional terms (all off by default; bench/results/switches240.json measures lowercase + attr + paraphrase
together), drawn from the batch's own seed:

- `train.shop_view_p`: that share of the image-query views is a `shop_view` (60×80 up to 180×240,
  reframed, padded onto new backgrounds) instead of the shopper-photo `augment`;
- `train.attr_weight` (`attr_loss`): per product one attribute text (one attribute or a combination,
  in a training wording of catalog/wording.py, never a held-out one) against the products'
  image-only and multimodal embeddings, both directions, multi-positive: every product with the
  attributes the text names;
- `train.title_image_weight` (`title_image_loss`): the title as a query (KAGL's text → image) against
  the products' image-only embeddings, and back; positives: products with the same title;
- `train.query_lowercase_p` (`make_batch`): that share of the text queries in lowercase;
- `train.query_paraphrase_p` (`make_batch`): that share of the text queries in a marker wording of
  catalog/wording.py ("a photo of a Men Navy Blue Shirts"; the same attributes, so the same positives);
- `train.coaugment` (MOON2.0 co-augmentation): `train.coaugment_view_p` of the image-query views are a
  visual expansion of the product shot (catalog/expansions.py, made here on the fly: ~10 ms a view, a
  fresh draw every step), and `train.coaugment_title_p` of the products with a stored enriched title
  (`moon-ray coaugment`, column `enriched_title`) train with it in place of their title.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from moon_ray.catalog.expansions import random_expansion
from moon_ray.catalog.wording import attribute_wording, paraphrase_wording
from moon_ray.config import Config
from moon_ray.losses.contrastive import (
    gather_no_grad,
    gather_with_grad,
    identity_positives,
    key_positives,
    matryoshka_info_nce,
    symmetric_info_nce,
)
from moon_ray.models.temperature import Temperature
from moon_ray.train.augment import augment, shop_view

ATTRS = ("gender", "colour", "article_type", "brand")
# probability that a text query names each attribute (article type always)
QUERY_ATTR_PROB = {"gender": 0.8, "colour": 0.8, "article_type": 1.0, "brand": 0.25}
# share of text queries that name a single attribute ("Navy Blue", "Watches", "Women"): broad queries
# whose positives are every in-batch product with that value, as a zero-shot label prompt expects
SINGLE_ATTR_QUERY_P = 0.2
SINGLE_ATTRS = ("colour", "article_type", "gender")
# attribute texts of the alignment loss: share naming one attribute; else article type plus each of these
ATTR_SINGLE_P = 0.5
ATTR_COMBINE_P = {"brand": 0.15, "gender": 0.6, "colour": 0.7}
ENRICHED_COLUMN = "enriched_title"  # written by `moon-ray coaugment` (catalog/coaugment.py)


@dataclass
class TrainBatch:
    images: list[bytes]
    titles: list[str]
    views: list  # augmented PIL images
    text_queries: list[str]
    phrases: list[str]  # short attribute phrase for image+text queries
    attr_ids: torch.Tensor  # (B, 4) int64 hashes of gender, colour, article_type, brand
    query_attrs: torch.Tensor  # (B, 4) bool: attributes the text query names
    attrs: list[dict[str, str]] | None = None  # per product: its non-empty ATTRS values
    seed: int = 0  # for what training_forward draws by config (shop views, attribute texts)
    enriched: list[str | None] | None = None  # per product: its stored enriched title, if any


def attr_hash(value) -> int:
    if value is None or value == "":
        return -1
    return int.from_bytes(hashlib.blake2b(str(value).lower().encode(), digest_size=7).digest(), "big")


def make_batch(rows: dict[str, np.ndarray], rng: random.Random, image_size: int,
               lowercase_p: float = 0.0, paraphrase_p: float = 0.0) -> TrainBatch:
    """The batch of `rows`; `paraphrase_p` (train.query_paraphrase_p) of the text queries in a marker
    wording, `lowercase_p` (train.query_lowercase_p) in lowercase (each drawn only when it is above 0, so a
    run without them draws exactly as before)."""
    n = len(rows["title"])
    texts, used, phrases = [], [], []
    for i in range(n):
        attrs = {a: rows[a][i] for a in ATTRS}
        single = [a for a in SINGLE_ATTRS if attrs[a]]
        if single and rng.random() < SINGLE_ATTR_QUERY_P:
            names = [rng.choice(single)]
        else:
            names = [a for a in ATTRS if attrs[a] and rng.random() < QUERY_ATTR_PROB[a]]
        order = [a for a in ("brand", "gender", "colour", "article_type") if a in names]
        text = " ".join(str(attrs[a]) for a in order)
        if paraphrase_p > 0 and order and rng.random() < paraphrase_p:
            text = paraphrase_wording({a: str(attrs[a]) for a in order}, rng)
        texts.append(text.lower() if lowercase_p > 0 and rng.random() < lowercase_p else text)
        used.append([a in names for a in ATTRS])
        phrase_attr = "colour" if attrs["colour"] and rng.random() < 0.6 else "gender"
        phrases.append(" ".join(str(x) for x in (attrs[phrase_attr], attrs["article_type"]) if x))
    return TrainBatch(
        images=list(rows["image"]),
        titles=[str(t) for t in rows["title"]],
        views=[augment(b, rng, image_size) for b in rows["image"]],
        text_queries=texts,
        phrases=phrases,
        attr_ids=torch.tensor([[attr_hash(rows[a][i]) for a in ATTRS] for i in range(n)], dtype=torch.long),
        query_attrs=torch.tensor(used, dtype=torch.bool),
        attrs=[{a: str(rows[a][i]) for a in ATTRS if rows[a][i]} for i in range(n)],
        seed=rng.getrandbits(62),
        enriched=[str(t) if t else None for t in rows[ENRICHED_COLUMN]] if ENRICHED_COLUMN in rows else None,
    )


def text_positives(q_ids: torch.Tensor, q_used: torch.Tensor, c_ids: torch.Tensor) -> torch.Tensor:
    """(B, 4), (B, 4) bool, (N, 4) -> (B, N) bool: candidate matches every attribute the query names."""
    match = (q_ids.unsqueeze(1) == c_ids.unsqueeze(0)) | ~q_used.unsqueeze(1)
    return match.all(-1)


def attribute_texts(batch: TrainBatch, rng: random.Random) -> tuple[list[str], torch.Tensor]:
    """One attribute text per product and (B, 4) bool: the ATTRS it names. A single attribute (p =
    ATTR_SINGLE_P) or the article type with others (ATTR_COMBINE_P each), so every combination's plain
    wording is a training wording; a product without attributes gets its title and names none."""
    texts, named = [], []
    for values, title in zip(batch.attrs, batch.titles, strict=True):
        single = [a for a in SINGLE_ATTRS if a in values]
        if not values:
            names = []
        elif single and ("article_type" not in values or rng.random() < ATTR_SINGLE_P):
            names = [rng.choice(single)]
        else:
            names = [a for a in ("brand", "gender", "colour") if a in values and rng.random() < ATTR_COMBINE_P[a]]
            names.append("article_type")
        texts.append(attribute_wording({a: values[a] for a in names}, rng) if names else title)
        named.append([a in names for a in ATTRS])
    return texts, torch.tensor(named, dtype=torch.bool).reshape(len(texts), len(ATTRS))


def query_views(batch: TrainBatch, share: float, size: int) -> list:
    """The image-query views: `share` of them (drawn from the batch seed) replaced by a `shop_view`."""
    if share <= 0:
        return batch.views
    rng = random.Random(batch.seed + 1)
    return [shop_view(im, rng, size) if rng.random() < share else v
            for im, v in zip(batch.images, batch.views, strict=True)]


def coaugmented(batch: TrainBatch, view_p: float, title_p: float, size: int) -> tuple[TrainBatch, dict]:
    """The batch with `view_p` of its query views replaced by a visual expansion of the product image
    and `title_p` of its titles by the stored enriched title (where one is stored), drawn from the
    batch seed; and {"coaug_views", "coaug_titles"}: how many were replaced."""
    rng = random.Random(batch.seed + 2)
    views, titles = list(batch.views), list(batch.titles)
    enriched = batch.enriched or [None] * len(titles)
    n_views = n_titles = 0
    for i, image in enumerate(batch.images):
        if rng.random() < view_p:
            views[i], n_views = random_expansion(image, rng, size)[1], n_views + 1
        if enriched[i] and rng.random() < title_p:
            titles[i], n_titles = enriched[i], n_titles + 1
    return dataclasses.replace(batch, views=views, titles=titles), {"coaug_views": n_views, "coaug_titles": n_titles}


def training_forward(model: nn.Module, temperature: Temperature, batch: TrainBatch, cfg: Config,
                     reasoning: list[str] | None = None) -> tuple[dict, dict]:
    """Embeds products (with their reasoning traces when given) and queries, gathers candidates
    across ranks, returns (losses, metrics)."""
    t, dims = cfg.train, cfg.model.matryoshka
    coaug = {}
    if t.coaugment:
        batch, coaug = coaugmented(batch, t.coaugment_view_p, t.coaugment_title_p, cfg.model.vision.image_size)
    pixels = model.pixels(batch.images)
    views = model.pixels(query_views(batch, t.shop_view_p, cfg.model.vision.image_size))
    # the augmented views feed the image and the image+text queries: run the tower over them once
    needs_views = t.image_weight > 0 or t.align_weight > 0 or t.multimodal_weight > 0
    view_feats = model.visual_features(views) if needs_views else None
    aligned = t.attr_weight > 0 or t.title_image_weight > 0  # these also embed the product image alone
    prod_feats = model.visual_features(pixels) if aligned else None
    prod = model(pixels=pixels, features=prod_feats, texts=batch.titles, reasoning=reasoning, modality="multimodal")
    cand = gather_with_grad(prod.raw)
    c_ids = gather_no_grad(batch.attr_ids.to(cand.device))
    b = prod.raw.shape[0]
    offset = _rank() * b  # this rank's products sit at [offset, offset + b) of the gathered candidates
    tau = temperature()
    own = identity_positives(b, cand.shape[0], offset, device=cand.device)
    q_ids, q_used = batch.attr_ids.to(cand.device), batch.query_attrs.to(cand.device)
    same_cat = (q_ids[:, 2:3] == c_ids[:, 2].unsqueeze(0))
    common = dict(temperature=tau, hard_negatives=same_cat, hard_weight=t.hard_negative_weight)
    losses, metrics, aux = {}, dict(coaug), [prod.aux_loss]
    if t.text_weight > 0:
        q = model(texts=batch.text_queries, modality="text", is_query=True)
        pos = text_positives(q_ids, q_used, c_ids) | own
        losses["text_loss"] = t.text_weight * matryoshka_info_nce(q.raw, cand, dims, positives=pos, **common)
        metrics["text_acc"] = _top1(q.embedding, cand, pos)
        aux.append(q.aux_loss)
    img_q = None
    if t.image_weight > 0 or t.align_weight > 0:
        img_q = model(features=view_feats, modality="image", is_query=True)
        aux.append(img_q.aux_loss)
    if t.image_weight > 0:
        losses["image_loss"] = t.image_weight * matryoshka_info_nce(img_q.raw, cand, dims, positives=own, **common)
        metrics["image_acc"] = _top1(img_q.embedding, cand, own)
    if t.multimodal_weight > 0:
        mm = model(features=view_feats, texts=batch.phrases, modality="multimodal", is_query=True)
        losses["multimodal_loss"] = t.multimodal_weight * matryoshka_info_nce(mm.raw, cand, dims, positives=own, **common)
        metrics["multimodal_acc"] = _top1(mm.embedding, cand, own)
        aux.append(mm.aux_loss)
    if t.align_weight > 0:
        title = model(texts=batch.titles, modality="text")
        losses["align_loss"] = t.align_weight * symmetric_info_nce(img_q.embedding, title.embedding, tau)
        aux.append(title.aux_loss)
    if aligned:
        terms, extra, more_aux = alignment_terms(model, batch, cfg, cand, prod_feats, c_ids, own, tau)
        losses |= terms
        metrics |= extra
        aux += more_aux
    if cfg.model.moe:
        losses["moe_loss"] = cfg.model.moe_aux_weight * torch.stack(aux).mean()
    metrics["temperature"] = float(tau.detach())
    metrics["candidates"] = cand.shape[0]
    return losses, metrics


def alignment_terms(model: nn.Module, batch: TrainBatch, cfg: Config, cand: torch.Tensor, prod_feats: torch.Tensor,
                    c_ids: torch.Tensor, own: torch.Tensor, tau: torch.Tensor) -> tuple[dict, dict, list]:
    """attr_loss and title_image_loss (see the module docstring) against the products' image-only
    embeddings (from `prod_feats`, gathered across ranks) and multimodal ones (`cand`, gathered).
    own (b, N): each local product's column among the gathered ones."""
    t = cfg.train

    def nce(q: torch.Tensor, c: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return matryoshka_info_nce(q, c, cfg.model.matryoshka, positives=pos, temperature=tau)

    img = model(features=prod_feats, modality="image", is_query=True)
    img_all = gather_with_grad(img.raw)
    losses, metrics, aux = {}, {}, [img.aux_loss]
    if t.title_image_weight > 0:
        title = model(texts=batch.titles, modality="text", is_query=True)
        keys = torch.tensor([attr_hash(x) for x in batch.titles], dtype=torch.long, device=cand.device)
        pos = key_positives(keys, gather_no_grad(keys)) | own  # identical titles are one query's positives
        losses["title_image_loss"] = t.title_image_weight * 0.5 * (
            nce(title.raw, img_all, pos) + nce(img.raw, gather_with_grad(title.raw), pos))
        metrics["title_image_acc"] = _top1(title.embedding, img_all, pos)
        aux.append(title.aux_loss)
    if t.attr_weight > 0:
        texts, named = attribute_texts(batch, random.Random(batch.seed))
        attr = model(texts=texts, modality="text", is_query=True)
        ids, named = batch.attr_ids.to(cand.device), named.to(cand.device)
        named_all = gather_no_grad(named)
        # text -> product: the product has every attribute the text names (a text naming none: its own)
        t2p = (text_positives(ids, named, c_ids) & named.any(-1, keepdim=True)) | own
        p2t = (text_positives(gather_no_grad(ids), named_all, ids).T & named_all.any(-1)) | own
        attr_all = gather_with_grad(attr.raw)
        terms = [nce(attr.raw, img_all, t2p), nce(attr.raw, cand, t2p), nce(img.raw, attr_all, p2t),
                 nce(cand[own.any(0)], attr_all, p2t)]
        losses["attr_loss"] = t.attr_weight * torch.stack(terms).mean()
        metrics["attr_image_acc"] = _top1(img.embedding, attr_all, p2t)  # image -> its attribute text
        aux.append(attr.aux_loss)
    return losses, metrics, aux


class TrainingModule(nn.Module):
    """Model + temperature with one `forward(batch) -> (losses, metrics)`, so that DDP sees exactly one
    forward (all embedding passes of a step) per backward."""

    def __init__(self, model: nn.Module, temperature: Temperature, cfg: Config):
        super().__init__()
        self.model, self.temperature, self.cfg = model, temperature, cfg

    def prepare(self, batch: TrainBatch) -> tuple:
        """Inputs of `forward` beyond the batch (none: joint training's reward phase goes here)."""
        return ()

    def forward(self, batch: TrainBatch) -> tuple[dict, dict]:
        return training_forward(self.model, self.temperature, batch, self.cfg)


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@torch.no_grad()
def _top1(queries: torch.Tensor, cand_raw: torch.Tensor, positives: torch.Tensor) -> float:
    cand = torch.nn.functional.normalize(cand_raw, dim=-1)
    best = (queries @ cand.T).argmax(1)
    return float(positives[torch.arange(len(best)), best].float().mean())
