"""Baseline encoders, registered by name for `get_encoder`: `frozen` and `random`.

`frozen` — pretrained encoders, nothing trained. Images go through ImageNet EfficientNet-Lite0 (the
(1280, 7, 7) patch grid, global-average-pooled, L2-normalised: i); texts through all-MiniLM-L6-v2
(mean-pooled over the attention mask, L2-normalised: t — the sentence-transformers recipe). The two
live in separate blocks of one 1664-d vector, and the whole row is L2-normalised again:

    product (image + title)  [i ; t] / √2        image query        [i ; 0]
    text query               [0 ; t]             image+text query   [i ; t] / √2

so one product index serves every query kind: text → product ranks by MiniLM(query)·MiniLM(title),
image → product by EfficientNet(query)·EfficientNet(image) (both scaled by 1/√2, which does not change
the order), image+text → product by the mean of the two. A text vector and an image-only vector are
orthogonal, so zero-shot classification from the image alone (label prompts are text) gives every
label the score 0: the frozen baseline cannot do it, and the tie-aware accuracy reports chance.

`random` — the floor: every distinct input (image bytes and/or text) gets its own Gaussian vector,
seeded by a blake2b hash of the input, so repeated inputs agree and nothing else does.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence

import numpy as np

from moon_ray.models.encoder import Encoder, l2_normalise, register_encoder

IMAGE_DIM = 1280  # EfficientNet-Lite0 channels
IMAGE_CHUNK = 16  # images per forward pass: larger CPU batches were slower (allocation churn)
TEXT_DIM = 384  # all-MiniLM-L6-v2 hidden size


def _check_pairs(images: Sequence[bytes | None], texts: Sequence[str | None]) -> None:
    if len(images) != len(texts):
        raise ValueError(f"encode: {len(images)} images but {len(texts)} texts (parallel lists expected)")
    empty = [i for i, (im, tx) in enumerate(zip(images, texts, strict=True)) if im is None and not tx]
    if empty:
        raise ValueError(f"encode: item {empty[0]} has neither an image nor a text")


class FrozenEncoder(Encoder):
    """EfficientNet-Lite0 ⊕ all-MiniLM-L6-v2, frozen; see the module docstring for the combination."""

    name = "frozen"
    dim = IMAGE_DIM + TEXT_DIM

    def __init__(self, image_size: int = 224, max_text_tokens: int = 256, device: str | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from moon_ray.models.weights import efficientnet_lite0, minilm_dir

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.image_size = image_size
        self.max_text_tokens = max_text_tokens
        self.vision = efficientnet_lite0().to(self.device, memory_format=torch.channels_last)
        self.tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
        self.text_model = AutoModel.from_pretrained(minilm_dir()).eval().to(self.device)

    def encode(self, images: Sequence[bytes | None], texts: Sequence[str | None]) -> np.ndarray:
        _check_pairs(images, texts)
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        img_rows = [i for i, im in enumerate(images) if im is not None]
        txt_rows = [i for i, tx in enumerate(texts) if tx]
        if img_rows:
            out[img_rows, :IMAGE_DIM] = self.encode_images([images[i] for i in img_rows])
        if txt_rows:
            out[txt_rows, IMAGE_DIM:] = self.encode_texts([texts[i] for i in txt_rows])
        return l2_normalise(out)

    def encode_images(self, images: Sequence[bytes]) -> np.ndarray:
        """(N, 1280) L2-normalised pooled EfficientNet-Lite0 features of encoded images."""
        import torch

        from moon_ray.models.weights import EFFNET_MEAN, EFFNET_STD

        mean = torch.tensor(EFFNET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(EFFNET_STD, device=self.device).view(1, 3, 1, 1)
        pooled = []
        for start in range(0, len(images), IMAGE_CHUNK):
            batch = np.stack([self._pixels(b) for b in images[start : start + IMAGE_CHUNK]])  # (n, H, W, 3)
            x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
            x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                grid = self.vision.extract_features(x)  # (n, 1280, 7, 7)
                pooled.append(grid.mean(dim=(2, 3)).float().cpu().numpy())
        return l2_normalise(np.concatenate(pooled))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(N, 384) L2-normalised mean-pooled MiniLM embeddings."""
        import torch

        tok = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_text_tokens,
                             return_tensors="pt").to(self.device)
        with torch.inference_mode():
            hidden = self.text_model(**tok).last_hidden_state  # (N, T, 384)
            mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return l2_normalise(pooled.float().cpu().numpy())

    def _pixels(self, data: bytes) -> np.ndarray:
        from PIL import Image

        img = Image.open(io.BytesIO(data)).convert("RGB")
        if img.size != (self.image_size, self.image_size):
            img = img.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        return np.asarray(img, dtype=np.uint8)


class RandomEncoder(Encoder):
    """A deterministic random unit vector per distinct (image bytes, text) input."""

    name = "random"

    def __init__(self, dim: int = 256, seed: int = 0):
        self.dim = dim
        self.seed = seed

    def encode(self, images: Sequence[bytes | None], texts: Sequence[str | None]) -> np.ndarray:
        _check_pairs(images, texts)
        rows = [self._vector(im, tx) for im, tx in zip(images, texts, strict=True)]
        return l2_normalise(np.stack(rows)) if rows else np.zeros((0, self.dim), np.float32)

    def _vector(self, image: bytes | None, text: str | None) -> np.ndarray:
        h = hashlib.blake2b(digest_size=8)
        h.update(self.seed.to_bytes(8, "little", signed=True))
        for part in (image, text.encode() if text else None):  # length-prefixed: no ambiguity
            h.update(b"\xff" * 8 if part is None else len(part).to_bytes(8, "little") + part)
        rng = np.random.default_rng(int.from_bytes(h.digest(), "little"))
        return rng.standard_normal(self.dim).astype(np.float32)


@register_encoder("frozen")
def frozen(**kwargs) -> FrozenEncoder:
    return FrozenEncoder(**kwargs)


@register_encoder("random")
def random(**kwargs) -> RandomEncoder:
    return RandomEncoder(**kwargs)
