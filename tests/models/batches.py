"""Product rows as the training data loader yields them (a dict of object arrays), for `make_batch`."""

from __future__ import annotations

import numpy as np

from tests.catalog.fixtures import image_bytes

COLOURS = ["Red", "Blue", "Green", "Black", "White", "Navy Blue"]


def rows(n: int = 4) -> dict[str, np.ndarray]:
    """`n` men's shirts with distinct brands and image colours, alternating Shirts and Tshirts."""
    return {
        "id": np.array([str(i) for i in range(n)], dtype=object),
        "title": np.array([f"Brand{i} Men {COLOURS[i % 6]} Shirt" for i in range(n)], dtype=object),
        "image": np.array([image_bytes(size=(64, 64), colour=(40 * i % 255, 90, 200)) for i in range(n)], dtype=object),
        "gender": np.array(["Men"] * n, dtype=object),
        "colour": np.array([COLOURS[i % 6] for i in range(n)], dtype=object),
        "article_type": np.array(["Shirts" if i % 2 else "Tshirts" for i in range(n)], dtype=object),
        "brand": np.array([f"Brand{i}" for i in range(n)], dtype=object),
    }
