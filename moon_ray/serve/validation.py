"""Request inputs -> model items, with the limits checked; Matryoshka truncation; output encoding.

    items = to_items(request.input, Limits.of(cfg.serve))   # ApiError(400) naming the bad input
    vecs = truncate(vecs, 128)                              # first 128 dims, rows re-normalised
    encode_vector(vecs[0], "base64")                        # base64 of little-endian float32 (OpenAI)

An image is base64 (whitespace ignored) or a data URL (`data:image/png;base64,...`). It must decode
to a real image: the header's width × height is checked against `max_image_pixels` before any pixel
is decoded (decompression bombs), then the whole image is decoded once, so truncated or corrupt
files are refused here with a 400 and never reach the model. The model gets the original bytes.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from moon_ray.config import ServeConfig
from moon_ray.serve.errors import ApiError


@dataclass(frozen=True)
class Item:
    """One model input: encoded image bytes and/or text."""

    image: bytes | None
    text: str | None

    @property
    def kind(self) -> str:
        """text, image or multimodal: the query modality."""
        if self.image is not None:
            return "multimodal" if self.text else "image"
        return "text"


@dataclass(frozen=True)
class Limits:
    max_inputs: int
    max_text_chars: int
    max_image_pixels: int

    @classmethod
    def of(cls, scfg: ServeConfig) -> Limits:
        return cls(scfg.max_inputs, scfg.max_text_chars, scfg.max_image_pixels)


def to_items(inputs: Sequence, limits: Limits, param: str = "input") -> list[Item]:
    """Validated `InputItem`s (or anything with .text/.image) -> Items; ApiError(400) on the first bad one.

    Errors name the field as `input[3].image`; with param="" (a search query) as `image`.
    """
    if len(inputs) > limits.max_inputs:
        raise ApiError(400, f"too many inputs: {len(inputs)} (at most {limits.max_inputs} per request, "
                            "serve.max_inputs)", param=param, code="too_many_inputs")
    items = []
    for i, item in enumerate(inputs):
        prefix = f"{param}[{i}]." if param else ""
        text = item.text or None
        if text is not None and len(text) > limits.max_text_chars:
            raise ApiError(400, f"{prefix}text is {len(text)} characters long (at most {limits.max_text_chars}, "
                                "serve.max_text_chars)", param=f"{prefix}text", code="text_too_long")
        image = decode_image(item.image, limits.max_image_pixels, f"{prefix}image") if item.image else None
        items.append(Item(image=image, text=text))
    return items


def decode_image(value: str, max_pixels: int, param: str = "image") -> bytes:
    """Base64 or data-URL text -> the image's bytes, after checking that they decode to a bounded image."""
    data = _base64_payload(value, param)
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ApiError(400, f"{param} is not valid base64 ({e}); send base64 or a data URL "
                            "'data:image/jpeg;base64,...'", param=param, code="invalid_base64") from None
    if not raw:
        raise ApiError(400, f"{param} is empty", param=param, code="invalid_image")
    check_image(raw, max_pixels, param)
    return raw


def _base64_payload(value: str, param: str) -> str:
    if not value.startswith("data:"):
        return value
    header, sep, payload = value.partition(",")
    if not sep or not header.endswith(";base64"):
        raise ApiError(400, f"{param}: a data URL must look like 'data:image/png;base64,<data>'",
                       param=param, code="invalid_data_url")
    media = header[5:].split(";")[0]
    if media and not media.startswith("image/"):
        raise ApiError(400, f"{param}: the data URL's media type is {media!r}, not an image/* type",
                       param=param, code="invalid_data_url")
    return payload


def check_image(raw: bytes, max_pixels: int, param: str = "image") -> tuple[int, int]:
    """(width, height) of an encoded image that decodes fully; ApiError(400) otherwise."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ApiError(400, f"{param} has {width}x{height} = {width * height} pixels (at most {max_pixels}, "
                                    "serve.max_image_pixels)", param=param, code="image_too_large")
            if width < 1 or height < 1:
                raise ApiError(400, f"{param} has no pixels ({width}x{height})", param=param, code="invalid_image")
            img.load()
    except ApiError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = "a truncated or corrupt image" if "truncated" in str(e) or "broken" in str(e) else "not an image"
        raise ApiError(400, f"{param} decodes to {len(raw)} bytes that are {reason} PIL can read ({e})",
                       param=param, code="invalid_image") from None
    return width, height


def allowed_dimensions(encoder) -> tuple[int, ...]:
    """Output sizes a request may ask for: the Matryoshka prefixes the model was trained with, else its dim."""
    cfg = getattr(encoder, "cfg", None)
    prefixes = tuple(getattr(getattr(cfg, "model", None), "matryoshka", ()) or ())
    return prefixes if prefixes and prefixes[-1] == encoder.dim else (encoder.dim,)


def check_dimensions(dimensions: int | None, dim: int, allowed: Sequence[int], model: str) -> int | None:
    """None (full size) or a valid `dimensions`; ApiError(400) saying what is allowed."""
    if dimensions is None or dimensions == dim:
        return None
    if dimensions > dim:
        raise ApiError(400, f"dimensions={dimensions} is larger than the {dim} dimensions of model {model!r}",
                       param="dimensions", code="invalid_dimensions")
    if tuple(allowed) == (dim,):
        raise ApiError(400, f"dimensions={dimensions} is not allowed for model {model!r}: it was not trained "
                            f"with Matryoshka prefixes, so only its full {dim} dimensions are served",
                       param="dimensions", code="invalid_dimensions")
    if dimensions not in allowed:
        raise ApiError(400, f"dimensions={dimensions} is not allowed for model {model!r}: its embeddings are "
                            f"trained at {', '.join(map(str, allowed))} (Matryoshka prefixes)",
                       param="dimensions", code="invalid_dimensions")
    return dimensions


def truncate(vecs: np.ndarray, dimensions: int | None) -> np.ndarray:
    """The first `dimensions` columns, each row re-normalised to unit length (None: unchanged)."""
    if dimensions is None:
        return vecs
    head = np.asarray(vecs[:, :dimensions], dtype=np.float32)
    return head / np.maximum(np.linalg.norm(head, axis=1, keepdims=True), 1e-12)


def encode_vector(vec: np.ndarray, encoding_format: str) -> list[float] | str:
    """float: a list of floats; base64: base64 of the little-endian float32 bytes (as OpenAI)."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode("ascii")
    return np.asarray(vec, dtype=np.float32).tolist()


def decode_vector(text: str) -> np.ndarray:
    """The inverse of encode_vector(..., "base64")."""
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)


def count_tokens(tokenizer, texts: Sequence[str]) -> int:
    """Tokens of `texts` by the model's tokenizer (no special tokens); whitespace words without one."""
    texts = [t for t in texts if t]
    if not texts:
        return 0
    if tokenizer is None:
        return sum(len(t.split()) for t in texts)
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return int(sum(len(row) for row in ids))
