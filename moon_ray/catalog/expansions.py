"""Visual expansions of a product shot (MOON2.0 co-augmentation, Section 12) made with image operations
only, no generator model. Each is seeded by a `random.Random` and returns a (size, size) RGB image:

| kind        | what it makes from the catalog shot                                                      |
| ----------- | ---------------------------------------------------------------------------------------- |
| subject     | main-subject extraction: the subject's tight box (a 4-10 % margin), centred on white     |
| background  | the subject (its mask, edges feathered) composited onto a plain, gradient, noise or       |
|             | stripe background: every pixel outside the mask changes, the subject keeps its pixels     |
| angle       | a horizontal flip (half the draws) and a mild perspective warp (corners moved <= 8 %)     |
| detail      | a close-up: a square of 35-60 % of the subject box's shorter side, inside the box, scaled |

    view = expand(jpeg_bytes, "background", random.Random(3), size=224)
    kind, view = random_expansion(jpeg_bytes, rng, size=224)

The subject mask: catalog shots are products on a white (padded) background, so the background is the
near-white pixels (every channel above WHITE_LEVEL, the level creative/defects.py uses) *connected to
the border*; near-white parts enclosed by the product (a white shirt's front inside its outline, a logo)
stay subject. A shot without a white border (a photo) has no background: its mask is the whole image,
and `background` then leaves it as it is (there is nothing to replace). Colours of the product are
never changed (colour is an attribute the embedding must keep).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from moon_ray.catalog.images import open_rgb

WHITE_LEVEL = 235  # a pixel with every channel above this may be background (as in creative/defects.py)
MIN_SUBJECT = 16  # fewer subject pixels than this: no subject found, the whole image is the subject
KINDS = ("subject", "background", "angle", "detail")
ExpansionFn = Callable[[Image.Image, random.Random, int], Image.Image]
EXPANSIONS: dict[str, ExpansionFn] = {}


def register(name: str):
    def wrap(fn: ExpansionFn) -> ExpansionFn:
        EXPANSIONS[name] = fn
        return fn

    return wrap


def expand(data: bytes | Image.Image, kind: str, rng: random.Random, size: int = 224) -> Image.Image:
    """The `kind` expansion of an image (JPEG/PNG bytes or a PIL image) at (size, size)."""
    if kind not in EXPANSIONS:
        raise ValueError(f"unknown expansion {kind!r}; known: {', '.join(EXPANSIONS)}")
    img = data if isinstance(data, Image.Image) else open_rgb(data)
    return EXPANSIONS[kind](img.convert("RGB").resize((size, size)), rng, size)


def random_expansion(data: bytes | Image.Image, rng: random.Random, size: int = 224,
                     kinds: tuple[str, ...] = KINDS) -> tuple[str, Image.Image]:
    """(kind, view): one expansion of a kind drawn uniformly from `kinds`."""
    kind = rng.choice(kinds)
    return kind, expand(data, kind, rng, size)


# ------------------------------------------------------------------------------------------ the subject
def subject_mask(img: Image.Image) -> np.ndarray:
    """(H, W) bool: the product. Background = near-white pixels connected to the image border (grown
    from the border through near-white pixels, 4-neighbours, until it stops changing)."""
    white = (np.asarray(img.convert("RGB")) > WHITE_LEVEL).all(axis=2)
    reach = np.zeros_like(white)
    reach[0], reach[-1], reach[:, 0], reach[:, -1] = white[0], white[-1], white[:, 0], white[:, -1]
    for _ in range(white.shape[0] * white.shape[1]):  # bounded: each round adds a pixel or stops
        grown = reach.copy()
        grown[1:] |= reach[:-1]
        grown[:-1] |= reach[1:]
        grown[:, 1:] |= reach[:, :-1]
        grown[:, :-1] |= reach[:, 1:]
        grown &= white
        if np.array_equal(grown, reach):
            break
        reach = grown
    mask = ~reach
    return mask if mask.sum() >= MIN_SUBJECT else np.ones_like(mask)


def subject_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the mask's pixels (the whole image for an empty mask)."""
    if not mask.any():
        return 0, 0, mask.shape[1], mask.shape[0]
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


@register("subject")
def main_subject(img: Image.Image, rng: random.Random, size: int) -> Image.Image:
    """The subject's box with a 4-10 % margin, centred on a white square, at (size, size)."""
    left, top, right, bottom = subject_box(subject_mask(img))
    crop = img.crop((left, top, right, bottom))
    side = int(max(right - left, bottom - top) * (1 + 2 * rng.uniform(0.04, 0.10)))
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(crop, ((side - crop.width) // 2, (side - crop.height) // 2))
    return canvas.resize((size, size), Image.Resampling.BICUBIC)


# ------------------------------------------------------------------------------------------ background
def background_canvas(width: int, height: int, rng: random.Random, kinds: int = 4) -> np.ndarray:
    """(height, width, 3) float32 background: 0 plain, 1 a two-colour gradient (vertical or horizontal),
    2 a blocky noise texture, 3 stripes of two colours; the kind drawn from the first `kinds`."""
    base = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
    kind = rng.randrange(kinds)
    if kind == 0:
        return np.broadcast_to(base, (height, width, 3))
    if kind == 1:
        other = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
        t = np.linspace(0.0, 1.0, height if rng.random() < 0.5 else width, dtype=np.float32)
        ramp = t[:, None, None] if len(t) == height else t[None, :, None]
        return np.broadcast_to(base + (other - base) * ramp, (height, width, 3))
    if kind == 2:
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, 25.0, (height // 4 + 1, width // 4 + 1, 3))
        return np.repeat(np.repeat(base + noise, 4, axis=0), 4, axis=1)[:height, :width]
    other = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
    period = rng.randint(6, 24)
    axis = np.arange(height)[:, None] + (np.arange(width)[None, :] if rng.random() < 0.5 else 0)
    stripe = ((axis // period) % 2).astype(np.float32)[..., None]
    return np.broadcast_to(base + (other - base) * stripe, (height, width, 3))


@register("background")
def new_background(img: Image.Image, rng: random.Random, size: int) -> Image.Image:
    """The subject composited onto a new background (`background_canvas`); its mask's edge is feathered
    by a 1 px blur so the cut-out shows no white halo."""
    mask = subject_mask(img)
    if mask.all():
        return img
    alpha = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(1.0))
    a = np.asarray(alpha, dtype=np.float32)[..., None] / 255.0
    a[mask] = 1.0  # the subject keeps its own pixels; only the background side of the edge blends
    canvas = background_canvas(img.width, img.height, rng)
    out = np.asarray(img, dtype=np.float32) * a + canvas * (1.0 - a)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------- angle, detail
def perspective_coeffs(src: list[tuple[float, float]], dst: list[tuple[float, float]]) -> list[float]:
    """The 8 coefficients PIL's PERSPECTIVE transform takes to map output points `dst` to input `src`."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return np.linalg.solve(np.array(rows, dtype=np.float64), np.array(rhs, dtype=np.float64)).tolist()


@register("angle")
def new_angle(img: Image.Image, rng: random.Random, size: int) -> Image.Image:
    """Maybe flipped left-right, then a mild perspective: each corner moved by up to 8 % of the side
    (the product seen slightly from one side), the uncovered area white."""
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    w, h = img.size
    corners = [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)]
    moved = [(x + rng.uniform(-0.08, 0.08) * w, y + rng.uniform(-0.08, 0.08) * h) for x, y in corners]
    coeffs = perspective_coeffs(corners, moved)
    return img.transform((w, h), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC,
                         fillcolor=(255, 255, 255)).resize((size, size))


def detail_window(box: tuple[int, int, int, int], rng: random.Random) -> tuple[int, int, int, int]:
    """A square window of 35-60 % of the box's shorter side, inside the box."""
    left, top, right, bottom = box
    bw, bh = right - left, bottom - top
    side = max(2, int(min(bw, bh) * rng.uniform(0.35, 0.60)))
    x0 = left + rng.randint(0, max(0, bw - side))
    y0 = top + rng.randint(0, max(0, bh - side))
    return x0, y0, x0 + side, y0 + side


@register("detail")
def close_up(img: Image.Image, rng: random.Random, size: int) -> Image.Image:
    """A `detail_window` of the subject box, scaled to (size, size)."""
    window = detail_window(subject_box(subject_mask(img)), rng)
    return img.crop(window).resize((size, size), Image.Resampling.BICUBIC)
