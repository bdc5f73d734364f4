"""Random image augmentations for training queries: the shopper's photo of a product.

Crop to 45–90 % of the side, rotate ±15°, maybe flip, down-scale and back up, blur, JPEG re-encode.
Colours are left alone (colour is an attribute the embedding must keep).
"""

from __future__ import annotations

import io
import random

from PIL import Image, ImageFilter


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
