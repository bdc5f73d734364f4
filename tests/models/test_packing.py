"""Sequence packing of the LM's embedding passes, the cheap LoRA dropout and the folded vision tower:
the same results as the plain paths, checked against hand-derived layouts and the unoptimised code."""

from __future__ import annotations

import functools

import pytest
import torch

import moon_ray.models.embedder as embedder_mod
from moon_ray.models.language import causal_lm
from moon_ray.models.packing import plan_packing
from tests.train.test_model_and_step import tiny_cfg


def test_plan_packs_first_fit_decreasing_with_positions_restarting_per_sequence():
    # real lengths 5, 2, 3, 6 in rows padded to 8 (32 positions): rows of C=6 -> [6] [5] [3, 2] = 18
    mask = torch.tensor([[1, 1, 1, 0, 1, 1, 0, 0],  # 5 real tokens, a gap (title padding before reasoning)
                         [1, 1, 0, 0, 0, 0, 0, 0],
                         [1, 1, 1, 0, 0, 0, 0, 0],
                         [1, 1, 1, 1, 1, 1, 0, 0]])
    plan = plan_packing(mask)
    assert (plan.rows, plan.cap) == (3, 6)
    assert plan.positions.tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 0], [0, 1, 2, 0, 1, 0]]
    x = torch.arange(32.0).view(4, 8, 1)
    packed = plan.pack(x)[..., 0]
    assert packed[0].tolist() == [24, 25, 26, 27, 28, 29]  # row 3, all six
    assert packed[1, :5].tolist() == [0, 1, 2, 4, 5]  # row 0 without its gap
    assert packed[2, :5].tolist() == [16, 17, 18, 8, 9]  # rows 2 and 1 share a packed row
    back = plan.unpack(plan.pack(x))
    assert torch.equal(back, x * mask.unsqueeze(-1))  # real positions restored, padding zero
    assert plan.slots(torch.tensor([8, 9, 3])).tolist() == [15, 16, -1]  # a padded position has no slot


def test_no_plan_when_packing_saves_little():
    assert plan_packing(torch.ones(4, 10, dtype=torch.long)) is None
    assert plan_packing(torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])) is None  # 2 rows of 4 either way


@pytest.mark.parametrize(("switches", "attention"), [([], "sdpa"), ([], "eager"), (["model.pooling=last"], "sdpa"),
                                                    (["model.residual=false"], "sdpa")])
def test_packed_embeddings_and_gradients_equal_padded(switches, attention, monkeypatch):
    """Also under eager attention (bf16 training's path), whose packed-sequence mask is additive."""
    model = embedder_mod.MoonEmbedder(tiny_cfg("model.lm.lora.dropout=0", *switches).model).eval()
    causal_lm(model.lm).set_attn_implementation(attention)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):  # LoRA B and the residual gates start at zero
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    x = torch.randn(4, 3, 224, 224)
    kw = dict(pixels=x, texts=["a b c d e f g h i j k l m n o p q r s t u v w", "c", "Brand Men", "x y"],
              reasoning=["r s t", "", "long reasoning trace with words and more words", "q"])
    results = []
    for planner in (lambda mask: None, functools.partial(plan_packing, min_saving=-1.0)):  # never / always pack
        monkeypatch.setattr(embedder_mod, "plan_packing", planner)
        model.zero_grad()
        out = model(**kw)
        (out.raw * torch.linspace(-1, 1, out.raw.shape[1])).sum().backward()
        results.append((out.raw.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (padded, g_pad), (packed, g_pack) = results
    assert torch.allclose(padded, packed, atol=1e-5)
    assert g_pad.keys() == g_pack.keys() and any("lora_A" in n for n in g_pad)
    for n in g_pad:
        assert torch.allclose(g_pad[n], g_pack[n], atol=1e-5, rtol=1e-4), n


def test_lora_dropout_acts_in_the_rank_r_bottleneck_while_training():
    model = embedder_mod.MoonEmbedder(tiny_cfg("model.lm.lora.dropout=0.5").model)
    layer = next(m for m in model.lm.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer"))
    assert isinstance(layer.lora_dropout["default"], torch.nn.Identity)  # none on the wide input
    seen = []
    layer.lora_A["default"].register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    x = torch.randn(64, layer.in_features)
    clean = layer.lora_A["default"].weight @ x.T
    layer.train()
    layer(x)
    dropped = seen[-1].T
    zeros = float((dropped == 0).float().mean())
    assert 0.35 < zeros < 0.65  # p = 0.5 over 64 × r draws
    keep = dropped != 0
    assert torch.allclose(dropped[keep], 2 * clean[keep], atol=1e-5)  # survivors scaled by 1 / (1 - p)
    layer.eval()
    layer(x)
    assert torch.allclose(seen[-1].T, clean, atol=1e-5)


def test_frozen_efficientnet_folds_batch_norm_without_changing_features():
    from moon_ray.config import VisionConfig
    from moon_ray.models.vision import build_tower

    ref, folded = build_tower(VisionConfig()).eval(), build_tower(VisionConfig()).freeze()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert all(not p.requires_grad for p in folded.parameters())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        want, got = ref(x), folded(folded.input_format(x))
    assert torch.allclose(want, got, atol=1e-4 * float(want.abs().max()))
    folded.freeze(torch.bfloat16)  # idempotent; then bf16 storage
    assert {p.dtype for p in folded.parameters()} == {torch.bfloat16}
