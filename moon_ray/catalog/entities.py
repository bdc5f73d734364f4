"""Entity extraction: brand, category path, colour, material, gender, season, usage.

MOON2.0 replaced a learned entity tagger with rules plus filtering for reproducibility; we do the same
with rules and a gazetteer *learned from the catalog*:

- brand: the title's leading words. `Gazetteer.learn` counts the prefixes of the words before the
  gender word ("Reid & Taylor Men Check Purple Shirts" -> "Reid", "Reid &", "Reid & Taylor") and keeps
  a longer prefix while it still starts `extend_ratio` of the titles the shorter one starts; so
  "Manchester United" stays whole while "Turtle Check" (a pattern) stops at "Turtle".
- colour: the colour column, else the longest colour phrase in the title (colour vocabulary = the
  catalog's colour values plus common colour words).
- material: the material column, else a material word in the title (rule list with synonyms).
- gender: the column, else a gender word in the title; season/usage: the columns.
"""

from __future__ import annotations

import collections
import json
import re
from dataclasses import dataclass, field

GENDER_WORDS = {
    "men": "Men", "mens": "Men", "man": "Men", "male": "Men", "women": "Women", "womens": "Women",
    "woman": "Women", "female": "Women", "ladies": "Women", "unisex": "Unisex", "boys": "Boys",
    "boy": "Boys", "girls": "Girls", "girl": "Girls", "kids": "Kids",
}
BASE_COLOURS = (
    "black", "white", "blue", "navy blue", "red", "green", "grey", "gray", "brown", "pink", "purple",
    "yellow", "orange", "beige", "cream", "maroon", "olive", "gold", "silver", "khaki", "teal",
    "off white", "charcoal", "magenta", "peach", "turquoise blue", "multi",
)
# material word (lower case) -> canonical material
MATERIALS = {
    "leather": "Leather", "genuine leather": "Leather", "pu": "Synthetic Leather",
    "faux leather": "Synthetic Leather", "suede": "Suede", "denim": "Denim", "cotton": "Cotton",
    "linen": "Linen", "silk": "Silk", "wool": "Wool", "woollen": "Wool", "woolen": "Wool",
    "polyester": "Polyester", "nylon": "Nylon", "canvas": "Canvas", "mesh": "Mesh", "rubber": "Rubber",
    "stainless steel": "Stainless Steel", "steel": "Steel", "metal": "Metal", "plastic": "Plastic",
    "synthetic": "Synthetic", "velvet": "Velvet", "satin": "Satin", "chiffon": "Chiffon",
    "georgette": "Georgette", "crepe": "Crepe", "jute": "Jute", "fleece": "Fleece", "lycra": "Lycra",
    "khadi": "Khadi", "brass": "Brass", "ceramic": "Ceramic", "corduroy": "Corduroy",
    "knit": "Knit", "knitted": "Knit", "chambray": "Chambray", "viscose": "Viscose",
}
_WORD = re.compile(r"\S+")
MAX_BRAND_WORDS = 4


def words(text: str) -> list[str]:
    return _WORD.findall(text or "")


def _key(tokens) -> str:
    return " ".join(t.lower() for t in tokens)


def _pre_gender(tokens: list[str]) -> list[str] | None:
    """Words before the first gender word, if it comes within MAX_BRAND_WORDS + 1 words."""
    for i, tok in enumerate(tokens[: MAX_BRAND_WORDS + 1]):
        if tok.lower().strip(",.'") in GENDER_WORDS:
            return tokens[:i] if i > 0 else None
    return None


def _phrase_index(phrases) -> dict[int, dict[str, str]]:
    by_len: dict[int, dict[str, str]] = collections.defaultdict(dict)
    for p in phrases:
        if p:
            by_len[len(p.split())][p.lower()] = p
    return dict(by_len)


def _find_phrase(tokens: list[str], index: dict[int, dict[str, str]]) -> str | None:
    """The longest phrase of `index` occurring in `tokens` (earliest on ties)."""
    low = [t.lower().strip(",.()") for t in tokens]
    for n in sorted(index, reverse=True):
        table = index[n]
        for i in range(len(low) - n + 1):
            hit = table.get(" ".join(low[i : i + n]))
            if hit:
                return hit
    return None


@dataclass
class Gazetteer:
    """Brands and colours learned from a catalog; JSON-serialisable, used at preprocess and serve time."""

    brands: dict[str, str] = field(default_factory=dict)  # lower-case brand -> display form
    brand_support: dict[str, int] = field(default_factory=dict)
    colours: list[str] = field(default_factory=lambda: [c.title() for c in BASE_COLOURS])

    @classmethod
    def learn(cls, titles, colours=(), min_support: int = 2, extend_ratio: float = 0.8) -> Gazetteer:
        counts: collections.Counter[str] = collections.Counter()
        display: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        spans = []
        for title in titles:
            span = _pre_gender(words(title))
            if not span:
                continue
            spans.append(span)
            for k in range(1, min(len(span), MAX_BRAND_WORDS) + 1):
                counts[_key(span[:k])] += 1
                display[_key(span[:k])][" ".join(span[:k])] += 1
        brands, support = {}, {}
        for span in spans:
            best = None
            for k in range(1, min(len(span), MAX_BRAND_WORDS) + 1):
                c = counts[_key(span[:k])]
                if c < min_support or (best and c < extend_ratio * counts[best]):
                    break
                best = _key(span[:k])
            if best:
                brands[best] = display[best].most_common(1)[0][0]
                support[best] = counts[best]
        vocab = {c.title(): None for c in BASE_COLOURS}
        vocab.update({c: None for c in colours if c})
        return cls(brands=brands, brand_support=support, colours=list(vocab))

    def __post_init__(self) -> None:
        self._brand_index = _phrase_index(self.brands.values())
        self._colour_index = _phrase_index(self.colours)
        self._material_index = {n: {k: MATERIALS[k] for k in t} for n, t in _phrase_index(MATERIALS).items()}

    def brand_of(self, title: str) -> str | None:
        """The longest learned brand that starts the title, else the words before the gender word."""
        tokens = words(title)
        for n in sorted(self._brand_index, reverse=True):
            if len(tokens) >= n:
                hit = self._brand_index[n].get(_key(tokens[:n]))
                if hit:
                    return hit
        span = _pre_gender(tokens)
        return " ".join(span) if span else None

    def colour_in(self, title: str) -> str | None:
        return _find_phrase(words(title), self._colour_index)

    def material_in(self, title: str) -> str | None:
        return _find_phrase(words(title), self._material_index)

    def to_json(self) -> str:
        return json.dumps({"brands": self.brands, "brand_support": self.brand_support, "colours": self.colours})

    @classmethod
    def from_json(cls, text: str) -> Gazetteer:
        d = json.loads(text)
        return cls(brands=d["brands"], brand_support=d.get("brand_support", {}), colours=d["colours"])


def gender_in(title: str) -> str | None:
    for tok in words(title):
        hit = GENDER_WORDS.get(tok.lower().strip(",.'"))
        if hit:
            return hit
    return None


def extract(fields: dict[str, str | None], gaz: Gazetteer) -> dict:
    """Entities of one product from its cleaned fields (title, gender, colour, …; None when absent)."""
    title = fields.get("title") or ""
    path = [fields.get(k) for k in ("master_category", "sub_category", "article_type")]
    return {
        "brand": fields.get("brand") or gaz.brand_of(title),
        "category_path": [p for p in path if p],
        "colour": fields.get("colour") or gaz.colour_in(title),
        "material": fields.get("material") or gaz.material_in(title),
        "gender": fields.get("gender") or gender_in(title),
        "season": fields.get("season"),
        "usage": fields.get("usage"),
    }
