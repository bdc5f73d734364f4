"""Text cleaning for catalog fields: strict UTF-8 decoding, HTML, unicode and whitespace normalisation."""

from __future__ import annotations

import html
import re
import unicodedata

_TAG = re.compile(r"<[^>]{0,200}>")
_SPACE = re.compile(r"\s+")
_CONTROL = dict.fromkeys(c for c in range(32) if chr(c) not in "\t\n\r")


class TextError(ValueError):
    """A cell that cannot be turned into text; the message is the reject reason."""


def decode(value: object, column: str) -> str | None:
    """Bytes/str/number/None -> str or None. Bytes must be valid UTF-8 (else `TextError`)."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise TextError(f"invalid_utf8: column {column!r} byte {e.start}") from None
    if isinstance(value, float) and value != value:  # NaN from pandas-like sources
        return None
    return str(value)


def normalise(text: str | None) -> str:
    """NFKC, HTML entities unescaped and tags removed, control characters dropped, spaces collapsed.

    >>> normalise("  Nike&amp;Co <b>Men</b>\\u00a0 Shoe ")
    'Nike&Co Men Shoe'
    """
    if not text:
        return ""
    text = html.unescape(text)
    text = _TAG.sub(" ", text)
    text = unicodedata.normalize("NFKC", text)
    text = text.translate(_CONTROL)
    return _SPACE.sub(" ", text).strip()


def is_missing(text: str | None) -> bool:
    """Empty, or a placeholder such as 'NA', 'null' or 'nan'."""
    return not text or text.strip().lower() in {"", "na", "n/a", "nan", "null", "none", "-"}
