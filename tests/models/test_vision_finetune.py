"""Issue 20 item 2, model side: the top N blocks of the vision tower train (exactly N), and the
residual enhancement reads the fine patch grid (by region) instead of re-adding the pooled tokens."""

from __future__ import annotations

import pytest
import torch

from moon_ray.config import ConfigError, VisionConfig, load_config
from moon_ray.models.embedder import MoonEmbedder
from moon_ray.models.vision import build_tower, cell_mask, pool_patches

TINY = ["model.lm.tiny=true", "model.vision.name=tiny", "model.vision.pretrained=false", "model.embed_dim=32",
        "model.matryoshka=[16,32]", "model.fusion_heads=4", "model.residual_every=1"]


def trained_blocks(tower) -> list[int]:
    return [i for i, b in enumerate(tower.blocks()) if any(p.requires_grad for p in b.parameters())]


@pytest.mark.parametrize("n", [1, 3, 16])
def test_unfreeze_top_n_trains_exactly_the_top_n_efficientnet_blocks(n):
    tower = build_tower(VisionConfig(pretrained=False)).unfreeze_top(n)
    assert len(tower.blocks()) == 16
    assert trained_blocks(tower) == list(range(16 - n, 16))
    head = {id(p) for m in tower.head_modules() for p in m.parameters()}
    top = {id(p) for b in tower.blocks()[16 - n:] for p in b.parameters()}
    for p in tower.parameters():
        assert p.requires_grad == (id(p) in top | head)
    assert not tower.training  # batch norm keeps its statistics
    with pytest.raises(ValueError, match="16 blocks"):
        build_tower(VisionConfig(pretrained=False)).unfreeze_top(17)


def test_embedder_trains_only_the_top_blocks_and_the_gradient_reaches_them():
    model = MoonEmbedder(load_config(None, [*TINY, "model.vision.trainable_blocks=1"]).model).train()
    assert trained_blocks(model.tower) == [1]
    model(pixels=torch.randn(2, 3, 224, 224), modality="image").raw.sum().backward()
    bottom, top = model.tower.blocks()
    assert top.weight.grad is not None and top.weight.grad.abs().sum() > 0
    assert bottom.weight.grad is None
    frozen = MoonEmbedder(load_config(None, TINY).model)
    assert trained_blocks(frozen.tower) == [] and not frozen.tower_trains


def test_cell_mask_follows_adaptive_pooling_bins():
    mask = cell_mask(3, 7)
    assert mask.shape == (10, 49) and mask[0].all()
    rows = {0: [0, 1, 2], 1: [2, 3, 4], 2: [4, 5, 6]}  # adaptive bins of 7 -> 3 overlap at the edges
    for r in range(3):
        for c in range(3):
            want = {fr * 7 + fc for fr in rows[r] for fc in rows[c]}
            assert set(mask[1 + r * 3 + c].nonzero().flatten().tolist()) == want
    grid = torch.randn(2, 5, 7, 7)
    feats = pool_patches(grid, 3, 7)
    assert feats.shape == (2, 1 + 9 + 49, 5) and torch.equal(feats[:, 10:], grid.flatten(2).transpose(1, 2))


def test_fine_grid_feeds_the_residual_not_the_sequence():
    model = MoonEmbedder(load_config(None, [*TINY, "model.residual_grid=4"]).model)
    x = torch.randn(2, 3, 224, 224)
    assert model.visual_features(x).shape[1] == 1 + 9 + 16
    assert model.visual_tokens(x).shape[1] == 10  # what generation and the LM's sequence see
    assert model.residual.fine and model.residual.fine_mask.shape == (10, 16)
    before = model(pixels=x, texts=["a b", "c"]).raw
    with torch.no_grad():
        model.residual.gates.fill_(1.0)
    after = model(pixels=x, texts=["a b", "c"]).raw
    assert not torch.allclose(before, after, atol=1e-4)  # gate 0: a no-op; opened, it reads the fine grid
    after.sum().backward()
    assert model.residual.queries[0].weight.grad.abs().sum() > 0 and model.residual.keys[0].weight.grad.abs().sum() > 0
    # each visual token only reads its own region: changing fine patches outside it leaves it alone
    fine = torch.randn(1, 16, 128)
    vis_hidden = torch.randn(1, 10, 128)
    model.residual.set_patches(torch.zeros(1, 10, 128), None, fine)
    out = model.residual._read_fine(0, vis_hidden)
    moved = fine.clone()
    moved[0, 15] += 10.0  # bottom-right fine patch: region of token 9 (and the global token 0) only
    model.residual.set_patches(torch.zeros(1, 10, 128), None, moved)
    changed = (model.residual._read_fine(0, vis_hidden) - out).abs().sum(-1)[0] > 1e-6
    assert changed.nonzero().flatten().tolist() == [0, 9]


@pytest.mark.parametrize("bad, match", [
    (["model.vision.trainable_blocks=-1"], "trainable_blocks"),
    (["model.vision.trainable_blocks=2", "model.vision.trainable=true"], "trainable_blocks"),
    (["model.vision.trainable_blocks=2", "model.arch=dual"], "dual_image_trainable_blocks"),
    (["model.residual_grid=2"], "residual_grid"),
])
def test_bad_settings_are_refused(bad, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, bad)
