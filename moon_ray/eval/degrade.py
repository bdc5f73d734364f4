"""Hard, deterministic degradation of a product image: the image → product (same product) query.

    query = degrade(product.image, seed=cfg.eval.seed, key=product.id)

One random draw per (seed, key), from a blake2b hash, so the same product gets the same query on
every run and machine. The steps, in order (no colour change anywhere):

1. crop a box whose width and height are each 50–70 % of the image's, at a random position;
2. rotate by ±15° (the uncovered corners white, like the catalog's padding);
3. flip left-right with probability 0.5;
4. shrink to 60×80 (the catalog's thumbnail resolution) and scale back up to the original size;
5. Gaussian blur, radius 0.5–1.5 px;
6. re-encode as JPEG quality 30.

Mild versions (a light crop and a flip) are too easy: frozen EfficientNet-Lite0 finds the product
at rank 1 for ~98 % of them, which leaves nothing to measure.

A key of the form `lowres:<id>` asks for the other image the evaluation needs, the product as a shop
serves a thumbnail: `low_res` (60×80, JPEG quality 85, nothing random), which the encoder scales back
up to its own input size. The low-resolution variants of the tasks (`eval.low_res`) embed the
catalog from these.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np

WHITE = (255, 255, 255)
LOW_RES_PREFIX = "lowres:"
SHOP_SIZE = (60, 80)  # (width, height) of the catalog's thumbnails


@dataclass(frozen=True)
class Degradation:
    """The ranges the random draw is taken from."""

    crop: tuple[float, float] = (0.5, 0.7)
    max_rotation: float = 15.0
    flip_p: float = 0.5
    low_res: tuple[int, int] = (60, 80)  # (width, height)
    blur_radius: tuple[float, float] = (0.5, 1.5)
    jpeg_quality: int = 30


def rng_for(seed: int, key: str) -> np.random.Generator:
    """A generator seeded by blake2b(seed:key); stable across runs, processes and machines."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def low_res_key(key: str) -> str:
    """The `degrade` key that turns a product's image into its low-resolution thumbnail."""
    return LOW_RES_PREFIX + key


def low_res(image: bytes, size: tuple[int, int] = SHOP_SIZE, quality: int = 85) -> bytes:
    """JPEG bytes of the image resized to `size` (width, height): a shop's thumbnail of the product."""
    from PIL import Image

    img = Image.open(io.BytesIO(image)).convert("RGB").resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def degrade(image: bytes, seed: int, key: str, spec: Degradation = Degradation()) -> bytes:
    """JPEG bytes of the degraded image; the output has the input's size. A `lowres:<id>` key gives
    `low_res(image)` instead (60×80)."""
    from PIL import Image, ImageFilter

    if key.startswith(LOW_RES_PREFIX):
        return low_res(image)
    rng = rng_for(seed, key)
    img = Image.open(io.BytesIO(image)).convert("RGB")
    w, h = img.size
    cw, ch = (max(1, round(f * s)) for f, s in zip(rng.uniform(*spec.crop, size=2), (w, h), strict=True))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    angle = float(rng.uniform(-spec.max_rotation, spec.max_rotation))
    flip = bool(rng.random() < spec.flip_p)
    radius = float(rng.uniform(*spec.blur_radius))

    img = img.crop((x0, y0, x0 + cw, y0 + ch))
    img = img.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=WHITE)
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = img.resize(spec.low_res, Image.Resampling.BILINEAR).resize((w, h), Image.Resampling.BICUBIC)
    img = img.filter(ImageFilter.GaussianBlur(radius))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=spec.jpeg_quality)
    return buf.getvalue()
