"""Worse creatives of a product image: each defect is a pure image operation (PIL/numpy) seeded by an rng.

    bad = apply_defect("blur", product_image, np.random.default_rng(7))

| defect        | what it does to the product shot                                                    |
| ------------- | ----------------------------------------------------------------------------------- |
| blur          | Gaussian blur, radius 2.5-4 px at 224 px: the product's detail is gone             |
| low_contrast  | contrast pulled to 25-40 % towards grey and the image dimmed: washed-out, flat      |
| cutoff        | a crop that leaves 35-55 % of the product's bounding box outside the frame          |
| tiny          | the whole shot shrunk to 28-38 % of the side and pasted off-centre on white         |
| clutter       | the white background replaced by noise and random coloured blocks                   |
| watermark     | large semi-transparent text ("SAMPLE", "SALE 70% OFF", …) across the product       |

Catalog shots are products on a white (padded) background, so the product is where pixels are not
near-white (`product_box`). Every operation keeps the image size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

WHITE_LEVEL = 235  # a pixel with every channel above this is background
WATERMARKS = ("SAMPLE", "SALE 70% OFF", "DO NOT COPY", "PREVIEW", "BUY NOW", "© STUDIO")
DefectFn = Callable[[Image.Image, np.random.Generator], Image.Image]
DEFECTS: dict[str, DefectFn] = {}


def register(name: str):
    def wrap(fn: DefectFn) -> DefectFn:
        DEFECTS[name] = fn
        return fn

    return wrap


def apply_defect(name: str, img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The `name` defect applied to an RGB image (same size); ValueError for an unknown name."""
    if name not in DEFECTS:
        raise ValueError(f"unknown defect {name!r}; known: {', '.join(DEFECTS)}")
    return DEFECTS[name](img.convert("RGB"), rng)


def foreground(img: Image.Image) -> np.ndarray:
    """(H, W) bool: pixels that are not near-white (the product on a catalog shot)."""
    return (np.asarray(img.convert("RGB")) < WHITE_LEVEL).any(axis=2)


def product_box(img: Image.Image) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the product (the whole image when it has no white background)."""
    mask = foreground(img)
    if mask.sum() < 16:
        return 0, 0, img.width, img.height
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


@register("blur")
def blur(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    radius = rng.uniform(2.5, 4.0) * img.width / 224
    return img.filter(ImageFilter.GaussianBlur(radius))


@register("low_contrast")
def low_contrast(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    flat = ImageEnhance.Contrast(img).enhance(rng.uniform(0.25, 0.4))
    return ImageEnhance.Brightness(flat).enhance(rng.uniform(0.75, 0.9))


@register("cutoff")
def cutoff(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Crop a window that misses 35-55 % of the product box along one axis, resized back."""
    left, top, right, bottom = product_box(img)
    w, h = img.size
    lost = rng.uniform(0.35, 0.55)
    side = int(rng.integers(4))  # 0 left, 1 right, 2 top, 3 bottom: the side the product leaves by
    if side < 2:
        cut = int((right - left) * lost)
        box = (left + cut, 0, w, h) if side == 0 else (0, 0, right - cut, h)
    else:
        cut = int((bottom - top) * lost)
        box = (0, top + cut, w, h) if side == 2 else (0, 0, w, bottom - cut)
    box = (box[0], box[1], max(box[2], box[0] + 8), max(box[3], box[1] + 8))
    crop = img.crop(box)
    scale = min(w / crop.width, h / crop.height)  # fill the frame with the crop, keep its aspect
    crop = crop.resize((max(1, int(crop.width * scale)), max(1, int(crop.height * scale))), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    # anchor the cut edge at the frame border, so the product visibly runs out of the picture
    x = 0 if side == 0 else w - crop.width if side == 1 else (w - crop.width) // 2
    y = 0 if side == 2 else h - crop.height if side == 3 else (h - crop.height) // 2
    canvas.paste(crop, (x, y))
    return canvas


@register("tiny")
def tiny(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    s = rng.uniform(0.28, 0.38)
    small = img.resize((max(1, int(w * s)), max(1, int(h * s))), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    x = int(rng.integers(0, w - small.width + 1))
    y = int(rng.integers(0, h - small.height + 1))
    canvas.paste(small, (x, y))
    return canvas


@register("clutter")
def clutter(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Background (near-white) pixels replaced by a busy scene: coloured blocks plus strong noise."""
    w, h = img.size
    scene = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(60, 200, 3)))
    draw = ImageDraw.Draw(scene)
    for _ in range(int(rng.integers(12, 24))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(w // 10, w // 2)), y0 + int(rng.integers(h // 10, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    noisy = np.asarray(scene, dtype=np.float32) + rng.normal(0, 28, (h, w, 3))
    noisy = np.clip(noisy, 0, 255).astype(np.uint8)
    background = ~foreground(img)
    out = np.asarray(img).copy()
    out[background] = noisy[background]
    return Image.fromarray(out, "RGB")


@register("watermark")
def watermark(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Big text, 55-75 % opaque, in two rows across the middle of the product."""
    w, h = img.size
    text = WATERMARKS[int(rng.integers(len(WATERMARKS)))]
    size = max(10, int(h * rng.uniform(0.13, 0.18)))
    font = ImageFont.load_default(size=size)
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    grey = int(rng.integers(0, 80)) if rng.random() < 0.75 else int(rng.integers(120, 170))
    alpha = int(255 * rng.uniform(0.55, 0.75))
    for row in (0.3, 0.62):
        x0, _, x1, _ = draw.textbbox((0, 0), text, font=font)
        x = max(0, (w - (x1 - x0)) // 2) + int(rng.integers(-w // 12, w // 12 + 1))
        draw.text((x, int(h * row)), text, font=font, fill=(grey, grey, grey, alpha))
    angle = float(rng.uniform(-30, 30))
    layer = layer.rotate(angle, resample=Image.Resampling.BICUBIC, center=(w / 2, h / 2))
    return Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")
