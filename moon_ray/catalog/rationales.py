"""Attribute-grounded rationales and beyond-the-title attribute queries, from a product's catalog fields.

    fields = product_fields(rows)                         # one dict per product: type, colour, gender, …
    render_rationale(fields[0], random.Random(0))         # "Shirts, navy blue colour, for men, fall season, casual use"
    beyond_title(fields[0], "Turtle Check Men Navy Blue Shirt")   # ["season", "usage"]
    attribute_query(fields[0], title)                     # ("Fall Casual Shirts", ("season", "usage", "article_type"))

A rationale states only attributes the product has (a field that is missing or empty never appears),
in varied wordings and orders, so the cold-start SFT stage (train/sft.py) teaches the reasoning LM to
say what the catalog knows, not to copy the title. `beyond_title` names the attributes the title does
not state; the reward's attribute queries (train/joint.py) ask for them, so a trace that states them
can change the score.
"""

from __future__ import annotations

import random
import re

# the catalog fields a rationale may state, in the order a query names them
FIELDS = ("brand", "gender", "colour", "season", "usage", "material", "article_type")
# attributes the reward's beyond-the-title queries may ask for (brand is in nearly every title)
QUERY_FIELDS = ("gender", "colour", "season", "usage", "article_type")

_GENDER = {
    "men": ("for men", "men's", "made for men", "gender: men"),
    "women": ("for women", "women's", "made for women", "gender: women"),
    "boys": ("for boys", "boys'", "gender: boys"),
    "girls": ("for girls", "girls'", "gender: girls"),
    "unisex": ("unisex", "gender: unisex", "for anyone, unisex"),
}
_CLAUSES = {
    "brand": ("by {v}", "brand {v}", "from {v}"),
    "colour": ("{l} colour", "colour: {l}", "in {l}", "{l} shade"),
    "season": ("{l} season", "suited to {l}", "season: {l}", "for {l} wear"),
    "usage": ("{l} use", "usage: {l}", "for {l} occasions", "{l} style"),
    "material": ("made of {l}", "material: {l}", "{l} material"),
    "article_type": ("{v}", "type: {v}", "a {l} item", "product type {l}"),
}
_SEPARATORS = (", ", "; ", ", ")
_WORD = re.compile(r"[a-z0-9]+")


def _value(v) -> str | None:
    if v is None:
        return None
    text = str(v).strip()
    return text if text and text.lower() not in ("nan", "none", "null") else None


def product_fields(rows: dict) -> list[dict[str, str | None]]:
    """Column dict of a batch (numpy arrays or lists) -> one {field: value or None} per product;
    fields the batch lacks are None."""
    n = len(rows["title"])
    return [{f: _value(rows[f][i]) if f in rows else None for f in FIELDS} for i in range(n)]


def _stem(word: str) -> str:
    if word.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def stems(text: str) -> list[str]:
    """Lower-case word stems of `text` (plural s/es dropped): 'Watches' and 'watch' agree."""
    return [_stem(w) for w in _WORD.findall(text.lower())]


def mentions(text: str, value: str) -> bool:
    """`value`'s words appear contiguously in `text` (word-wise, case and plural insensitive:
    'Men' is not found in 'Women')."""
    t, v = stems(text), stems(value)
    return bool(v) and any(t[i : i + len(v)] == v for i in range(len(t) - len(v) + 1))


def beyond_title(fields: dict, title: str) -> list[str]:
    """QUERY_FIELDS the product has that its title does not state."""
    return [f for f in QUERY_FIELDS if fields.get(f) and not mentions(title or "", fields[f])]


def attribute_query(fields: dict, title: str) -> tuple[str, tuple[str, ...]] | None:
    """A query naming the attributes the title omits (plus the article type, so it reads as a product
    search), and the fields it names; None when the title states every attribute it could ask for."""
    missing = beyond_title(fields, title)
    if not missing:
        return None
    names = tuple(f for f in QUERY_FIELDS if f in missing or (f == "article_type" and fields.get(f)))
    return " ".join(str(fields[f]) for f in names), names


def render_rationale(fields: dict, rng: random.Random) -> str:
    """One line stating the product's known attributes in a random wording and order (the article type
    first or last); never an attribute the product lacks."""
    clauses = []
    for f in FIELDS:
        v = fields.get(f)
        if not v or f == "article_type" or (f == "brand" and rng.random() < 0.5):
            continue
        if f == "gender":
            options = _GENDER.get(v.lower(), ("gender: {l}",))
        else:
            options = _CLAUSES[f]
        clauses.append(rng.choice(options).format(v=v, l=v.lower()))
    rng.shuffle(clauses)
    kind = fields.get("article_type")
    if kind:
        head = rng.choice(_CLAUSES["article_type"]).format(v=kind, l=kind.lower())
        clauses = [head, *clauses] if rng.random() < 0.7 else [*clauses, head]
    line = rng.choice(_SEPARATORS).join(clauses)
    return line[:1].upper() + line[1:] if line else line
