"""The words of a creative pair: the shopper's interest text, the reason a creative wins, and the reference
rationale rendered from that reason. Pure functions of the catalog attributes; no model involved.

    interest_text({"gender": "Men", "colour": "Navy Blue", "article_type": "Shirts", "usage": "Casual"}, rng)
    # -> "prefers casual navy blue shirts for men"
    render_rationale({"kind": "quality", "defect": "blur", "product": "Men Navy Blue Shirts"}, good="B")
    # -> "Both images show the same Men Navy Blue Shirts. Image A is blurred, so its details are lost;
    #     image B is sharp and shows the whole product clearly. B is the better creative."
    target_answer(reason, "B")  # -> "<think>…</think><answer>B</answer>", what CoT-SFT teaches

A reason is a small JSON-able dict; positions are not part of it, so the same reason renders the
rationale of the pair in either order (training shows pairs swapped, evaluation checks both orders).
"""

from __future__ import annotations

import numpy as np

INTEREST_ATTRS = ("gender", "colour", "article_type", "usage")
VISIBLE_ATTRS = ("colour", "article_type", "gender")  # what an interest pair's loser may differ in
DEFECT_PHRASES = {
    "blur": ("is blurred, so its details are lost", "is sharp"),
    "low_contrast": ("is washed out, with low contrast", "has clear colours and contrast"),
    "cutoff": ("cuts part of the product off at the edge of the frame", "shows the whole product"),
    "tiny": ("shows the product tiny in a mostly empty frame", "fills the frame with the product"),
    "clutter": ("has a cluttered, noisy background that distracts from it", "has a clean background"),
    "watermark": ("is covered by overlaid watermark text", "is free of overlaid text"),
}
GENDER_PHRASE = {"Men": "for men", "Women": "for women", "Boys": "for boys", "Girls": "for girls",
                 "Unisex": "for anyone"}
ATTR_NAMES = {"colour": "colour", "article_type": "kind of product", "gender": "audience", "usage": "style"}
INTEREST_TEMPLATES = (
    "prefers {usage}{colour}{type}{gender}",
    "is looking for {colour}{type}{gender}{usage_style}",
    "likes {usage}{colour}{type}{gender}",
)


def describe(attrs: dict) -> str:
    """'Men Navy Blue Shirts' from gender, colour and article type (missing ones left out)."""
    return " ".join(str(attrs[k]) for k in ("gender", "colour", "article_type") if attrs.get(k)) or "product"


def interest_text(named: dict, rng: np.random.Generator) -> str:
    """A shopper's interests in words from the named attributes (a subset of INTEREST_ATTRS)."""
    usage = (named.get("usage") or "").lower()
    slots = {
        "usage": f"{usage} " if usage else "",
        "usage_style": f", {usage} style" if usage else "",
        "colour": f"{named['colour'].lower()} " if named.get("colour") else "",
        "type": (named.get("article_type") or "products").lower(),
        "gender": f" {GENDER_PHRASE.get(named['gender'], 'for ' + named['gender'].lower())}" if named.get("gender") else "",
    }
    return INTEREST_TEMPLATES[int(rng.integers(len(INTEREST_TEMPLATES)))].format(**slots)


def other_position(good: str) -> str:
    if good not in ("A", "B"):
        raise ValueError(f"a position is A or B, got {good!r}")
    return "B" if good == "A" else "A"


def render_rationale(reason: dict, good: str) -> str:
    """The reference rationale of a pair whose better creative sits at `good` (A or B)."""
    bad = other_position(good)
    if reason["kind"] == "quality":
        flaw, merit = DEFECT_PHRASES[reason["defect"]]
        return (f"Both images show the same {reason['product']}. Image {bad} {flaw}; image {good} {merit}. "
                f"{good} is the better creative.")
    if reason["kind"] == "interest":
        wrong = " and ".join(f"{ATTR_NAMES[a]} ({reason['got'][a]}, not {reason['want'][a]})" for a in reason["mismatch"])
        return (f"The shopper {reason['interest']}. Image {good} shows {reason['good']}, which matches; "
                f"image {bad} shows {reason['other']}, the wrong {wrong}. {good} is the better creative.")
    raise ValueError(f"unknown reason kind {reason.get('kind')!r}")


def target_answer(reason: dict, good: str) -> str:
    """The full answer CoT-SFT teaches: the rationale in <think>, the choice in <answer>."""
    return f"<think>{render_rationale(reason, good)}</think><answer>{good}</answer>"
