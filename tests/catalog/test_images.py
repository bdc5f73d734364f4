import numpy as np
import pytest

from moon_ray.catalog import images
from moon_ray.catalog.images import ImageReject
from moon_ray.config import ImageConfig

from .fixtures import huge_png_header, image_bytes, truncated_jpeg

CFG = ImageConfig(size=64, min_side=8)


def _reason(data: bytes, cfg: ImageConfig = CFG) -> str:
    with pytest.raises(ImageReject) as err:
        images.process(data, cfg)
    return str(err.value)


def test_rgb_jpeg_resized_to_square():
    out = images.process(image_bytes(size=(80, 40)), CFG)
    img = images.open_rgb(out["image"])
    assert img.size == (64, 64) and img.mode == "RGB"
    assert (out["image_width"], out["image_height"], out["image_mode"]) == (80, 40, "RGB")
    # pad mode: the top and bottom bands are white padding
    px = np.asarray(img)
    assert px[0].min() > 240 and px[-1].min() > 240


@pytest.mark.parametrize("mode, fmt", [("CMYK", "JPEG"), ("L", "JPEG"), ("P", "PNG"), ("RGBA", "PNG"), ("LA", "PNG")])
def test_other_modes_become_rgb(mode, fmt):
    out = images.process(image_bytes(mode=mode, fmt=fmt, size=(64, 64)), CFG)
    assert out["image_mode"] == mode
    assert images.open_rgb(out["image"]).mode == "RGB"


def test_rgba_transparency_composited_on_white():
    out = images.process(image_bytes(mode="RGBA", fmt="PNG", size=(64, 64)), CFG)
    px = np.asarray(images.open_rgb(out["image"])).astype(int)
    assert px[40:, :28].mean() > 245  # transparent left half of the noisy bottom -> white
    assert px[40:, 36:].mean() < 200  # opaque right half keeps its content


def test_crop_and_stretch_modes():
    for mode in ("crop", "stretch"):
        out = images.process(image_bytes(size=(120, 60)), ImageConfig(size=32, min_side=8, resize_mode=mode))
        assert images.open_rgb(out["image"]).size == (32, 32)


def test_reject_reasons():
    assert _reason(b"\xff\xd8\xff\xe0 this is not a jpeg").startswith("image_corrupt")
    assert _reason(b"").startswith("image_corrupt")
    assert _reason(truncated_jpeg()).startswith("image_truncated")
    assert _reason(image_bytes(size=(1, 1))).startswith("image_too_small: 1x1")
    assert _reason(huge_png_header()).startswith("image_too_large")
    assert _reason(image_bytes(), ImageConfig(max_bytes=10)).startswith("image_too_large")


def test_read_bytes_missing_and_directory(tmp_path):
    with pytest.raises(ImageReject, match="image_missing"):
        images.read_bytes(str(tmp_path / "nope.jpg"), 1000)
    with pytest.raises(ImageReject, match="image_unreadable"):
        images.read_bytes(str(tmp_path), 10**9)
