"""Random image augmentations for training queries: the shopper's photo of a product.

`augment`: crop to 45–90 % of the side, rotate ±15°, maybe flip, down-scale and back up, blur, JPEG
re-encode. `shop_view` (`train.shop_view_p`): the product as another shop would serve it: reframed
(a crop of 60–100 % of each side), maybe padded onto a new background (plain, gradient or noise
texture), stored at a shop's resolution (60×80 up to 180×240, portrait 3:4, JPEG 50–90) and scaled back
up. Colours of the product are left alone everywhere (colour is an attribute the embedding must keep).
"""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image, ImageFilter

from moon_ray.catalog.expansions import background_canvas

SHOP_LOW, SHOP_HIGH = (60, 80), (180, 240)  # smallest and largest shop resolution (width, height)


def augment(data: bytes, rng: random.Random, size: int = 224) -> Image.Image:
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size))
    frac = rng.uniform(0.45, 0.9)
    side = int(size * frac)
    x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
    img = img.crop((x0, y0, x0 + side, y0 + side))
    img = img.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BILINEAR, fillcolor=(255, 255, 255))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.7:  # a thumbnail-sized photo
        small = rng.randint(48, 112)
        img = img.resize((small, int(small * 4 / 3))).resize((size, size), Image.Resampling.BILINEAR)
    if rng.random() < 0.6:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    if rng.random() < 0.7:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=rng.randint(20, 80))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img.resize((size, size), Image.Resampling.BICUBIC)


def shop_view(data: bytes, rng: random.Random, size: int = 224) -> Image.Image:
    """A (size, size) RGB view of the product image as a shop would serve it (see the module docstring)."""
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size))
    cw, ch = (int(size * rng.uniform(0.6, 1.0)) for _ in range(2))
    x0, y0 = rng.randint(0, size - cw), rng.randint(0, size - ch)
    img = img.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        img = pad_onto_background(img, rng)
    img = to_shop_resolution(img, rng)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=rng.randint(50, 90))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)


def to_shop_resolution(img: Image.Image, rng: random.Random, low: tuple[int, int] = SHOP_LOW,
                       high: tuple[int, int] = SHOP_HIGH) -> Image.Image:
    """The image resized to a portrait shop resolution between `low` and `high` (width, height, 3:4);
    half the draws come from the bottom third of the range, where thumbnails are."""
    top = low[0] + (high[0] - low[0]) // 3 if rng.random() < 0.5 else high[0]
    width = rng.randint(low[0], top)
    height = min(high[1], max(low[1], round(width * low[1] / low[0])))
    return img.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)


def pad_onto_background(img: Image.Image, rng: random.Random) -> Image.Image:
    """The image on a larger canvas (up to 1.4× each side) of a plain, gradient or noise-texture
    background; the product itself keeps its pixels."""
    w, h = img.size
    cw, ch = int(w * rng.uniform(1.05, 1.4)), int(h * rng.uniform(1.05, 1.4))
    canvas = background_canvas(cw, ch, rng, kinds=3)  # plain, gradient or noise texture
    out = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    out.paste(img, (rng.randint(0, cw - w), rng.randint(0, ch - h)))
    return out
