"""Broken and valid images and catalog rows made inside the tests (no files from outside)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def image_bytes(mode: str = "RGB", size=(80, 60), fmt: str = "JPEG", colour=(200, 30, 30)) -> bytes:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    arr[: size[1] // 2] = colour
    img = Image.fromarray(arr, "RGB")
    if mode == "RGBA":
        img = img.convert("RGBA")
        px = np.array(img)
        px[:, : size[0] // 2, 3] = 0  # left half transparent
        img = Image.fromarray(px, "RGBA")
    elif mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    elif mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def truncated_jpeg() -> bytes:
    data = image_bytes(size=(200, 150))
    return data[: len(data) * 3 // 5]


def huge_png_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose IHDR declares width×height pixels (10 G) with a tiny body: a decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
