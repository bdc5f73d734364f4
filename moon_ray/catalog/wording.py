"""Query wordings: the ones the training sampler writes, and held-out ones it never writes.

    forbidden = training_wordings(brand="Nike", gender="Men", colour="Navy Blue", article_type="Shirts")
    unseen_wording("Men", "Navy Blue", "Shirts", key="test-17", seed=0, forbidden=forbidden)
    # e.g. "navy shirt for gents", "Tees in Black for ladies", "shirts navy blue mens"

Why: the evaluation's text queries ("Men Navy Blue Shirts") are exactly the training template, so a
model can score well by matching that surface form. Evaluation therefore also renders every query in
wordings training never produces, and reports those as the primary text → product row.

What training writes (moon_ray/train/task.py `make_batch`, read, not imported: it lives on a higher
floor): the attribute values, unchanged, joined by single spaces, in the fixed order brand, gender,
colour, article type. Either one of gender / colour / article type alone (`SINGLE_ATTR_QUERY_P`), or
every attribute drawn with its probability, article type always. So the training wordings of a product
are the space-joined ordered subsequences of (brand, gender, colour, article type) that contain the
article type, plus each of gender, colour and article type alone (`training_wordings`).

A held-out wording takes a template the sampler cannot produce (another word order, or function words:
"for", "in", a comma), synonyms ("Tshirts" → "tees"), singular/plural and possessive forms, lowercase
(p = 0.5) and, for `TYPO_RATE` of the queries, one typo. Drawn from blake2b(seed:key), so a query gets
the same wording on every run. The result never equals a training wording of a relevant product, even
ignoring case and punctuation (`same_words`): a template that would is skipped for the next one.

Attribute texts for training's image ↔ attribute alignment (`attribute_wording`, `train.attr_weight`)
name one attribute or a combination, either in the plain template above (a training wording already)
or in an `ATTRIBUTE_TEMPLATES` wording. Every such template carries a word of `ATTRIBUTE_MARKERS`
("photo", "item", …), which neither the held-out TEMPLATES, their gender words and synonyms, nor the
catalog's gender / colour / article-type values contain (a test checks it on the catalog), so a
held-out evaluation wording can never equal one of them, and the held-out wordings stay as they were.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re

TRAINING_QUERY_FIELDS = ("brand", "gender", "colour", "article_type")  # make_batch: ATTRS, in its text order
SINGLE_QUERY_FIELDS = ("colour", "article_type", "gender")  # make_batch's SINGLE_ATTRS
TYPO_RATE = 0.05

TEMPLATES = (
    "{colour} {type} for {noun}",
    "{type} for {noun} in {colour}",
    "{adj} {type} in {colour}",
    "{type} {colour} {adj}",
    "{colour} {adj} {type}",
    "{type} for {noun}, {colour}",
)
GENDER_NOUN = {"men": ("men", "gents", "guys"), "women": ("women", "ladies"), "boys": ("boys", "kids"),
               "girls": ("girls", "kids"), "unisex": ("everyone", "men and women")}
GENDER_ADJ = {"men": ("men's", "mens", "male"), "women": ("women's", "womens", "ladies'"),
              "boys": ("boys'", "boy's"), "girls": ("girls'", "girl's"), "unisex": ("unisex", "gender-neutral")}
TYPE_SYNONYMS = {
    "tshirts": ("tees", "t-shirts", "tee shirts"), "shirts": ("button-down shirts", "button-ups"),
    "casual shoes": ("sneakers", "everyday shoes"), "sports shoes": ("running shoes", "trainers"),
    "formal shoes": ("dress shoes", "office shoes"), "watches": ("wristwatches", "timepieces"),
    "handbags": ("purses", "hand bags"), "heels": ("high heels", "heeled shoes"), "sunglasses": ("shades",),
    "wallets": ("billfolds", "card holders"), "flip flops": ("flip-flops", "slippers"),
    "sandals": ("open-toe sandals",), "belts": ("waist belts",), "backpacks": ("rucksacks", "school bags"),
    "jeans": ("denims", "denim pants"), "shorts": ("short pants", "half pants"), "trousers": ("pants", "slacks"),
    "track pants": ("joggers", "trackpants"), "flats": ("flat shoes", "ballerinas"), "dresses": ("frocks",),
    "sarees": ("saris",), "kurtas": ("traditional kurtas",), "tops": ("blouses",), "sweatshirts": ("hoodies",),
    "sweaters": ("jumpers", "pullovers"), "jackets": ("coats",), "caps": ("hats",), "ties": ("neckties",),
    "perfume and body mist": ("fragrance", "perfume"), "deodorant": ("deo", "body spray"),
    "nail polish": ("nail paint", "nail varnish"), "lipstick": ("lip colour",), "clutches": ("clutch bags",),
    "innerwear vests": ("undershirts", "vests"), "bra": ("brassiere",), "leggings": ("tights",),
    "night suits": ("pyjamas", "nightwear"), "nightdress": ("nightgown", "nighty"), "scarves": ("stoles",),
    "capris": ("cropped pants",), "trunk": ("boxer briefs",), "briefs": ("underpants",),
}
COLOUR_SYNONYMS = {
    "grey": ("gray",), "navy blue": ("navy",), "off white": ("off-white", "ivory"), "multi": ("multicolour",),
    "grey melange": ("heather grey",), "charcoal": ("charcoal grey",), "maroon": ("burgundy",),
    "gold": ("golden",), "turquoise blue": ("turquoise",), "mustard": ("mustard yellow",),
    "olive": ("olive green",), "magenta": ("fuchsia",), "lavender": ("light purple",),
    "fluorescent green": ("neon green",), "skin": ("skin tone",), "coffee brown": ("coffee",),
}


ATTRIBUTE_MARKERS = frozenset({"a", "an", "of", "photo", "picture", "item", "product", "with"})
ATTRIBUTE_TEMPLATES: dict[tuple[str, ...], tuple[str, ...]] = {  # by the fields named (training order)
    ("colour",): ("a {colour} item", "an item in {colour}", "a photo of something {colour}",
                  "a product with the colour {colour}"),
    ("gender",): ("an item for {gender}", "a product made for {gender}", "a photo of a {gender} product"),
    ("article_type",): ("a photo of a {type}", "a {type}", "a picture of {type}", "an item of type {type}"),
}
COMBINATION_TEMPLATES = ("a photo of a {phrase}", "a {phrase}", "a picture of {phrase}", "an item: {phrase}")
COLOUR_TYPE_TEMPLATES = ("a {type} with the colour {colour}", "a photo of a {type} in {colour}")
PLAIN_P = 0.4  # share of attribute texts in the plain training template


def attribute_wordings(values: dict[str, str]) -> list[str]:
    """Every training wording of the named attributes (field -> value, fields of TRAINING_QUERY_FIELDS):
    the plain template first, then the marker templates. Also the texts `attribute_wording` draws from."""
    names = tuple(f for f in TRAINING_QUERY_FIELDS if values.get(f))
    if not names:
        raise ValueError("attribute_wordings needs at least one attribute value")
    plain = " ".join(str(values[f]) for f in names)
    slots = {"colour": values.get("colour"), "gender": values.get("gender"), "type": values.get("article_type"),
             "phrase": plain}
    templates = list(ATTRIBUTE_TEMPLATES.get(names, COMBINATION_TEMPLATES if len(names) > 1 else ()))
    if len(names) > 1 and "colour" in names and "article_type" in names:
        rest = [f for f in names if f not in ("colour", "article_type")]
        slots["type"] = " ".join([*(str(values[f]) for f in rest), str(values["article_type"])])
        templates += COLOUR_TYPE_TEMPLATES
    return [plain, *(t.format(**slots) for t in templates)]


def attribute_wording(values: dict[str, str], rng: random.Random) -> str:
    """One training text of the named attributes: the plain template (p = PLAIN_P) or a marker
    template; lowercased with p = 0.3 (case never makes a wording new: `same_words` ignores it)."""
    options = attribute_wordings(values)
    text = options[0] if len(options) == 1 or rng.random() < PLAIN_P else rng.choice(options[1:])
    return text.lower() if rng.random() < 0.3 else text


def paraphrase_wording(values: dict[str, str], rng: random.Random) -> str:
    """One marker-template wording of a text query naming these attributes (`train.query_paraphrase_p`):
    "a photo of a Men Navy Blue Shirts", "a Shirts with the colour Navy Blue". A training wording (it
    carries a marker), so it never equals a held-out one; the plain template when no marker one exists."""
    options = attribute_wordings(values)
    return rng.choice(options[1:]) if len(options) > 1 else options[0]


def same_words(text: str) -> str:
    """The comparison key: casefolded words, punctuation and repeated spaces ignored."""
    return " ".join(re.findall(r"[0-9a-z]+", text.casefold()))


def training_wordings(brand: str | None, gender: str | None, colour: str | None,
                      article_type: str | None) -> set[str]:
    """Every text query `make_batch` can write for a product with these attributes."""
    values = dict(zip(TRAINING_QUERY_FIELDS, (brand, gender, colour, article_type), strict=True))
    present = [f for f in TRAINING_QUERY_FIELDS if values[f]]
    out = {str(values[f]) for f in SINGLE_QUERY_FIELDS if values[f]}
    if not values["article_type"]:
        out.add("")  # every attribute left out by chance
    for r in range(1, len(present) + 1):
        for names in itertools.combinations(present, r):  # combinations keep the fixed order
            if "article_type" in names or not values["article_type"]:
                out.add(" ".join(str(values[f]) for f in names))
    return out


def unseen_wording(gender: str, colour: str, article_type: str, key: str, seed: int = 0,
                   forbidden: set[str] | frozenset[str] = frozenset()) -> str:
    """A held-out wording of the (gender, colour, article type) query `key` (see the module docstring)."""
    rng = random.Random(int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "big"))
    blocked = {same_words(f) for f in forbidden}
    g = gender.casefold()
    slots = {
        "noun": rng.choice(GENDER_NOUN.get(g, (gender,))),
        "adj": rng.choice(GENDER_ADJ.get(g, (gender,))),
        "colour": _variant(colour, COLOUR_SYNONYMS, rng, inflect=False),
        "type": _variant(article_type, TYPE_SYNONYMS, rng, inflect=True),
    }
    lower, typo = rng.random() < 0.5, rng.random() < TYPO_RATE
    first = rng.randrange(len(TEMPLATES))
    for i in range(len(TEMPLATES)):
        text = TEMPLATES[(first + i) % len(TEMPLATES)].format(**slots)
        text = add_typo(text, rng) if typo else text
        text = text.lower() if lower else text
        if same_words(text) not in blocked:
            return text
    raise ValueError(f"no held-out wording of {key!r} differs from the training wordings")


def _variant(value: str, synonyms: dict[str, tuple[str, ...]], rng: random.Random, inflect: bool) -> str:
    """A synonym (p = 0.5, when one is known), else singular/plural toggled (p = 0.5, types only)."""
    options = synonyms.get(value.casefold())
    if options and rng.random() < 0.5:
        return rng.choice(options)
    if inflect and rng.random() < 0.5:
        return toggle_number(value)
    return value


def toggle_number(phrase: str) -> str:
    """'Shirts' -> 'Shirt', 'Dresses' -> 'Dress', 'Watch' -> 'Watches', 'Bra' -> 'Bras' (last word only)."""
    head, _, last = phrase.rpartition(" ")
    low = last.casefold()
    if low.endswith(("sses", "ches", "shes", "xes")):
        last = last[:-2]
    elif low.endswith("s") and not low.endswith("ss") and len(low) > 3:
        last = last[:-1]
    elif low.endswith(("s", "ch", "sh", "x")):
        last = last + "es"
    else:
        last = last + "s"
    return f"{head} {last}" if head else last


def add_typo(text: str, rng: random.Random) -> str:
    """One keyboard slip in a word of 4+ letters: two letters swapped, one dropped or one doubled."""
    words = text.split(" ")
    long = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not long:
        return text
    i = rng.choice(long)
    w = words[i]
    p = rng.randrange(1, len(w) - 1)  # keep the first letter
    op = rng.randrange(3)
    if op == 0 and w[p] != w[p + 1]:
        w = w[:p] + w[p + 1] + w[p] + w[p + 2:]
    elif op < 2:
        w = w[:p] + w[p + 1:]
    else:
        w = w[:p] + w[p] + w[p:]
    words[i] = w
    return " ".join(words)
