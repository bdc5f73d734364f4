"""Issue 20 item 4, training side: with train.coaugment the step draws visual expansions as image-query
views and swaps stored enriched titles in; off (the default) the step is untouched.

    .venv/bin/python -m pytest -q tests/train/test_coaugment.py
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from moon_ray.config import ConfigError, load_config
from moon_ray.models.embedder import MoonEmbedder
from moon_ray.models.temperature import Temperature
from moon_ray.train import task
from tests.models.batches import rows

TINY = ["model.lm.tiny=true", "model.vision.name=tiny", "model.vision.pretrained=false", "model.embed_dim=32",
        "model.matryoshka=[16,32]", "model.fusion_heads=4", "model.vision.image_size=64", "train.batch_size=4"]
ENRICHED = ["Brand0 Men Red Shirt, slim fit cotton", None, "Brand2 Men Green Shirt, linen, for summer", ""]


def coaug_rows() -> dict[str, np.ndarray]:
    out = rows(4)
    out[task.ENRICHED_COLUMN] = np.array(ENRICHED, dtype=object)
    return out


def test_batch_carries_stored_enriched_titles_and_coaugmented_swaps_them():
    batch = task.make_batch(coaug_rows(), random.Random(0), 64)
    assert batch.enriched == [ENRICHED[0], None, ENRICHED[2], None]  # "" is no title
    assert task.make_batch(rows(4), random.Random(0), 64).enriched is None
    same, counts = task.coaugmented(batch, 0.0, 0.0, 64)
    assert (same.titles, same.views, counts) == (batch.titles, batch.views, {"coaug_views": 0, "coaug_titles": 0})
    full, counts = task.coaugmented(batch, 1.0, 1.0, 64)
    assert full.titles == [ENRICHED[0], batch.titles[1], ENRICHED[2], batch.titles[3]]
    assert counts == {"coaug_views": 4, "coaug_titles": 2} and full.images == batch.images
    assert all(v.size == (64, 64) and v.tobytes() != w.tobytes() for v, w in zip(full.views, batch.views, strict=True))
    again, _ = task.coaugmented(batch, 1.0, 1.0, 64)  # drawn from the batch seed: the same views again
    assert [v.tobytes() for v in again.views] == [v.tobytes() for v in full.views]
    half = [task.coaugmented(task.make_batch(coaug_rows(), random.Random(s), 64), 0.3, 0.5, 64)[1] for s in range(30)]
    assert 0.15 < np.mean([h["coaug_views"] / 4 for h in half]) < 0.45  # about the share asked for
    assert 0.3 < np.mean([h["coaug_titles"] / 2 for h in half]) < 0.7


def step(cfg, model, batch):
    torch.manual_seed(0)
    model.zero_grad(set_to_none=True)
    losses, metrics = task.training_forward(model, Temperature(0.05, False), batch, cfg)
    sum(v for k, v in losses.items() if k.endswith("_loss")).backward()
    return losses, metrics, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_training_step_with_coaugment_runs_and_trains_on_the_new_views_and_titles():
    off_cfg = load_config(None, TINY)
    assert not off_cfg.train.coaugment  # off by default
    model = MoonEmbedder(off_cfg.model).eval()  # eval: no dropout, so both passes see the same network
    batch = task.make_batch(coaug_rows(), random.Random(0), 64)
    off, off_metrics, g_off = step(off_cfg, model, batch)
    assert not {"coaug_views", "coaug_titles"} & set(off_metrics)
    on_cfg = load_config(None, [*TINY, "train.coaugment=true", "train.coaugment_view_p=1", "train.coaugment_title_p=1"])
    on, metrics, g_on = step(on_cfg, model, batch)
    assert set(on) == set(off) and all(torch.isfinite(v) for v in on.values())
    assert (metrics["coaug_views"], metrics["coaug_titles"]) == (4, 2)
    for key in ("image_loss", "align_loss", "text_loss"):  # views and product titles both changed
        assert not torch.allclose(on[key], off[key], atol=1e-5), key
    changed = [n for n in g_off if not torch.allclose(g_on[n], g_off[n], atol=1e-7)]
    assert any(n.startswith("projector.") for n in changed) and any("lora" in n for n in changed)
    titles_only = load_config(None, [*TINY, "train.coaugment=true", "train.coaugment_view_p=0",
                                     "train.coaugment_title_p=1"])
    t_only, t_metrics, _ = step(titles_only, model, batch)
    assert (t_metrics["coaug_views"], t_metrics["coaug_titles"]) == (0, 2)
    assert not torch.allclose(t_only["text_loss"], off["text_loss"], atol=1e-5)  # the products' titles moved


@pytest.mark.parametrize("bad", ["train.coaugment_view_p=1.5", "train.coaugment_title_p=-0.1"])
def test_bad_coaugment_shares_are_refused(bad):
    with pytest.raises(ConfigError, match=bad.split("=")[0].split(".")[1]):
        load_config(None, [bad])


def test_the_train_dataset_reads_enriched_titles_only_when_coaugment_is_on_and_they_are_stored(capsys):
    from moon_ray.train.driver import coaugment_columns

    stored = ["id", "title", task.ENRICHED_COLUMN, "split"]
    assert coaugment_columns(load_config(None, ["train.coaugment=true"]), stored) == [task.ENRICHED_COLUMN]
    assert coaugment_columns(load_config(None, []), stored) == []
    assert coaugment_columns(load_config(None, ["train.coaugment=true"]), ["id", "title"]) == []
    assert "moon-ray coaugment" in capsys.readouterr().out
