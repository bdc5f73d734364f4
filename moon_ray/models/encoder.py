"""The one interface every embedding model exposes to evaluation, indexing and serving.

    enc = get_encoder("frozen")                  # a named baseline
    enc = get_encoder("outputs/train/export")    # an exported moon-ray model directory
    vecs = enc.encode(images=[jpeg_bytes, None], texts=[None, "Men Navy Blue Shirts"])

`encode` takes parallel lists: an item with an image and no text is an image query, text and no image
a text query, both an image+text query or a product (image + title). It returns float32 (N, dim),
L2-normalised rows, in one space shared by every kind of input, so one product index answers text,
image and image+text queries.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


class Encoder(abc.ABC):
    """An embedding model: (image?, text?) pairs -> L2-normalised vectors in one space."""

    name: str = "encoder"
    dim: int = 0

    @abc.abstractmethod
    def encode(self, images: Sequence[bytes | None], texts: Sequence[str | None]) -> np.ndarray:
        """float32 (N, dim), rows of unit norm; images are encoded image bytes (JPEG/PNG)."""

    def encode_products(self, images: Sequence[bytes], titles: Sequence[str]) -> np.ndarray:
        """The catalog side: a product is its image plus its title."""
        return self.encode(images, titles)


_REGISTRY: dict[str, Callable[..., Encoder]] = {}


def register_encoder(name: str):
    """Decorator: make a factory available to `get_encoder(name)`."""

    def wrap(factory: Callable[..., Encoder]) -> Callable[..., Encoder]:
        _REGISTRY[name] = factory
        return factory

    return wrap


def get_encoder(name_or_path: str, **kwargs) -> Encoder:
    """A registered name ('frozen', 'random', …) or a path to an exported model directory."""
    _load_builtin()
    if name_or_path in _REGISTRY:
        return _REGISTRY[name_or_path](**kwargs)
    path = Path(name_or_path)
    if path.is_dir() and "directory" in _REGISTRY:
        return _REGISTRY["directory"](path=path, **kwargs)
    raise ValueError(f"unknown model {name_or_path!r}: not one of {sorted(_REGISTRY)} nor an exported model directory")


def registered() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def _load_builtin() -> None:
    """Import the modules that register encoders (they import heavy libraries lazily)."""
    import importlib

    for module in ("moon_ray.models.baselines", "moon_ray.models.export"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)
