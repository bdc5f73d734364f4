"""Image validation, decoding to RGB and resizing to the encoder's resolution.

`read_bytes` reads the file and `process` decodes, checks and resizes it (JPEG bytes at `cfg.size`);
either raises `ImageReject` whose message is the reject reason:

| reason            | when                                                                 |
| ----------------- | -------------------------------------------------------------------- |
| image_missing     | no path/bytes for the product, or the file does not exist            |
| image_unreadable  | the file exists but cannot be read (permissions, a directory, ...)   |
| image_too_large   | file bytes > max_bytes, or header pixels > max_pixels (decompression bomb) |
| image_corrupt     | not a decodable image                                                |
| image_truncated   | the image data ends early                                            |
| image_too_small   | a side shorter than min_side                                         |

Grayscale, CMYK, palette, RGBA/LA (composited on white) and 16-bit images are converted to RGB.
"""

from __future__ import annotations

import io
import os
import warnings

from PIL import Image, ImageOps

from moon_ray.config import ImageConfig

WHITE = (255, 255, 255)


class ImageReject(ValueError):
    """The image cannot be used; `str(e)` is 'reason: detail'."""


def read_bytes(path: str, max_bytes: int) -> bytes:
    """The file's bytes, or `ImageReject` (missing, unreadable, too large)."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise ImageReject(f"image_missing: {path}") from None
    except OSError as e:
        raise ImageReject(f"image_unreadable: {path}: {e.strerror}") from None
    if size > max_bytes:
        raise ImageReject(f"image_too_large: {size} bytes > {max_bytes}")
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as e:
        raise ImageReject(f"image_unreadable: {path}: {e.strerror or e}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; transparency is composited on white, CMYK inverted-Adobe handled by PIL."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v * (1 / 256)).convert("L")
    if img.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, WHITE)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def resize(img: Image.Image, size: int, mode: str) -> Image.Image:
    """Square `size`×`size`: pad (fit + white border), crop (centre) or stretch."""
    if img.size == (size, size):
        return img
    if mode == "stretch":
        return img.resize((size, size), Image.Resampling.BICUBIC)
    if mode == "crop":
        return ImageOps.fit(img, (size, size), Image.Resampling.BICUBIC)
    return ImageOps.pad(img, (size, size), Image.Resampling.BICUBIC, color=WHITE)


def decode(data: bytes, cfg: ImageConfig) -> tuple[Image.Image, tuple[int, int], str]:
    """Validate and decode to an RGB image; returns (image, original (w, h), original mode)."""
    if len(data) > cfg.max_bytes:
        raise ImageReject(f"image_too_large: {len(data)} bytes > {cfg.max_bytes}")
    if not data:
        raise ImageReject("image_corrupt: empty file")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageReject(f"image_too_large: {e}") from None
    except Exception as e:  # PIL raises many types for garbage input
        raise ImageReject(f"image_corrupt: {type(e).__name__}: {e}") from None
    w, h = img.size
    if w * h > cfg.max_pixels:
        raise ImageReject(f"image_too_large: {w}x{h} = {w * h} pixels > {cfg.max_pixels}")
    if min(w, h) < cfg.min_side:
        raise ImageReject(f"image_too_small: {w}x{h} (min side {cfg.min_side})")
    mode = img.mode
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
    except OSError as e:
        reason = "image_truncated" if "truncated" in str(e).lower() else "image_corrupt"
        raise ImageReject(f"{reason}: {e}") from None
    except Exception as e:
        raise ImageReject(f"image_corrupt: {type(e).__name__}: {e}") from None
    return to_rgb(img), (w, h), mode


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def process(data: bytes, cfg: ImageConfig) -> dict:
    """Bytes -> {'image': JPEG bytes at cfg.size, 'image_width', 'image_height', 'image_mode'}."""
    img, (w, h), mode = decode(data, cfg)
    out = resize(img, cfg.size, cfg.resize_mode)
    return {"image": encode_jpeg(out, cfg.jpeg_quality), "image_width": w, "image_height": h, "image_mode": mode}


def open_rgb(data: bytes) -> Image.Image:
    """Decode stored (already validated) JPEG bytes into an RGB image."""
    return Image.open(io.BytesIO(data)).convert("RGB")
