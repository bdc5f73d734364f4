"""The composed embedder with tiny parts: shapes, switches, gradients, overfitting, checkpoints."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from moon_ray.config import load_config
from moon_ray.models.embedder import MoonEmbedder
from moon_ray.models.language import decoder_layers
from moon_ray.models.moe import routing_aux_loss
from moon_ray.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from moon_ray.train.task import ATTRS, TrainingModule, make_batch, text_positives
from moon_ray.train.worker import build_training, lr_lambda, train_step
from tests.models.batches import rows

TINY = ["model.lm.tiny=true", "model.vision.name=tiny", "model.vision.pretrained=false", "model.embed_dim=32",
        "model.matryoshka=[16,32]", "model.fusion_heads=4", "train.batch_size=4", "train.warmup_steps=1"]


def tiny_cfg(*extra):
    return load_config(None, [*TINY, *extra])


@pytest.mark.parametrize("switches", [[], ["model.fusion=false"], ["model.residual=false"], ["model.moe=false"],
                                      ["model.fusion=false", "model.residual=false", "model.moe=false"],
                                      ["model.visual_skip=false"], ["model.pooling=last"],
                                      ["model.lm.lora.enabled=false"]])
def test_every_switch_builds_and_runs(switches):
    model = MoonEmbedder(tiny_cfg(*switches).model)
    x = torch.randn(2, 3, 224, 224)
    for kw in (dict(pixels=x, texts=["a b", "c"], reasoning=["r", ""]), dict(texts=["q"], is_query=True, modality="text"),
               dict(pixels=x, modality="image")):
        out = model(**kw)
        assert out.embedding.shape[1] == 32
        assert torch.allclose(out.embedding.norm(dim=-1), torch.ones(out.embedding.shape[0]), atol=1e-5)
    assert (model.fusion is None) == ("model.fusion=false" in switches)
    assert (model.residual is None) == ("model.residual=false" in switches)
    assert (model.visual_skip is None) == ("model.visual_skip=false" in switches)


def test_visual_skip_starts_as_a_no_op_and_only_touches_inputs_with_images():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    on, off = MoonEmbedder(tiny_cfg().model), MoonEmbedder(tiny_cfg("model.visual_skip=false").model)
    off.load_state_dict({k: v for k, v in on.state_dict().items() if not k.startswith("visual_skip.")})
    on.eval(), off.eval()
    assert torch.allclose(on(pixels=x, texts=["a", "b"]).raw, off(pixels=x, texts=["a", "b"]).raw, atol=1e-6)
    with torch.no_grad():
        on.visual_skip.proj.weight.normal_()
    assert not torch.allclose(on(pixels=x, modality="image").raw, off(pixels=x, modality="image").raw, atol=1e-3)
    q = dict(texts=["q"], is_query=True, modality="text")
    assert torch.allclose(on(**q).raw, off(**q).raw, atol=1e-6)


def test_frozen_parts_stay_frozen_and_trainable_parts_move():
    cfg = tiny_cfg()
    model, temperature, opt, sched = build_training(cfg, torch.device("cpu"))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and not any("lora_" in n for n in frozen)
    assert any(n.startswith("tower.") for n in frozen) and any(".base_layer." in n for n in frozen)
    step = TrainingModule(model, temperature, cfg)
    for _ in range(2):
        train_step(step, opt, sched, make_batch(rows(), random.Random(0), 224), cfg)
    after = dict(model.named_parameters())
    assert all(torch.equal(frozen[n], after[n]) for n in frozen)
    moved = [n for n in trainable if not torch.equal(trainable[n], after[n])]
    assert any("lora_B" in n for n in moved) and any(n.startswith("projector.") for n in moved)
    assert any(n.startswith("fusion.") for n in moved) and any(n.startswith("head.") for n in moved)
    assert any(n.startswith("visual_skip.proj") for n in moved)


def test_loss_falls_when_overfitting_a_fixed_batch():
    cfg = tiny_cfg("train.lr=0.003", "train.align_weight=0", "train.steps=40", "train.warmup_steps=0")
    model, temperature, opt, sched = build_training(cfg, torch.device("cpu"))
    step = TrainingModule(model, temperature, cfg)
    batch = make_batch(rows(6), random.Random(1), 224)
    losses = [train_step(step, opt, sched, batch, cfg)["loss"] for _ in range(25)]
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses


def test_checkpoint_roundtrip_restores_step_and_weights(tmp_path):
    cfg = tiny_cfg()
    model, temperature, opt, sched = build_training(cfg, torch.device("cpu"))
    train_step(TrainingModule(model, temperature, cfg), opt, sched, make_batch(rows(), random.Random(0), 224), cfg)
    save_checkpoint(tmp_path / "a" / "step-000007", model, temperature, opt, sched, 7, cfg)
    save_checkpoint(tmp_path / "b" / "step-000003", model, temperature, opt, sched, 3, cfg)
    assert latest_checkpoint(tmp_path).name == "step-000007"
    assert (tmp_path / "a" / "step-000007" / "adapter" / "adapter_config.json").exists()
    fresh, t2, opt2, sched2 = build_training(cfg, torch.device("cpu"))
    assert load_checkpoint(tmp_path / "a" / "step-000007", fresh, t2, opt2, sched2) == 7
    for (n, p), (_, q) in zip(model.named_parameters(), fresh.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    assert sched2.last_epoch == sched.last_epoch and opt2.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


def test_text_positives_and_schedule_and_moe_aux():
    q = torch.tensor([[1, 2, 3, 4]])
    used = torch.tensor([[True, False, True, False]])
    c = torch.tensor([[1, 9, 3, 9], [1, 2, 4, 4], [2, 2, 3, 4]])
    assert text_positives(q, used, c).tolist() == [[True, False, False]]
    f = lr_lambda(warmup=2, total=10, floor=0.1)
    assert [round(f(s), 3) for s in (0, 1, 2, 10)] == [0.5, 1.0, 1.0, 0.1]
    assert routing_aux_loss(torch.full((4, 4), 0.25)).item() == pytest.approx(0.0, abs=1e-6)
    assert routing_aux_loss(torch.eye(4)).item() == pytest.approx(-1.0, abs=1e-4)
    assert routing_aux_loss(torch.tensor([[1.0, 0, 0, 0]] * 4)).item() == pytest.approx(0.0, abs=1e-4)


def test_text_queries_name_their_attributes_and_some_name_just_one():
    data = rows(12)
    batch = make_batch(data, random.Random(3), 64)
    many = [make_batch(data, random.Random(s), 64) for s in range(20)]
    singles = 0
    for b in [batch, *many]:
        for i, (text, used) in enumerate(zip(b.text_queries, b.query_attrs.tolist(), strict=True)):
            named = [a for a, u in zip(ATTRS, used, strict=True) if u]
            assert text == " ".join(str(data[a][i]) for a in ("brand", "gender", "colour", "article_type") if a in named)
            singles += len(named) == 1 and named[0] != "article_type"
    assert 0 < singles < 12 * 21 / 2  # colour-only / gender-only queries exist, and are the minority


def test_gradient_checkpointing_gives_the_same_gradients():
    x = torch.randn(2, 3, 224, 224)
    grads = []
    for flag in ("false", "true"):
        model = build_training(tiny_cfg("model.lm.lora.dropout=0", f"train.gradient_checkpointing={flag}"),
                               torch.device("cpu"))[0].train()
        torch.manual_seed(0)
        out = model(pixels=x, texts=["Brand0 Men Red Shirt", "Brand1 Women Blue Dress"], reasoning=["red cotton", ""])
        (out.embedding * torch.linspace(-1, 1, out.embedding.shape[1])).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("lora_A" in n for n in grads[0])
    for n, g in grads[0].items():
        assert torch.allclose(g, grads[1][n], atol=1e-5, rtol=1e-4), n
    model = build_training(tiny_cfg("train.gradient_checkpointing=true"), torch.device("cpu"))[0]
    flags = [layer.gradient_checkpointing for layer in decoder_layers(model.lm)]
    assert any(flags) and not all(flags)  # layers with a residual hook are left out


class _NotPlainData:
    """Anything torch.load(weights_only=True) must refuse (an arbitrary class: pickle would run code)."""


def test_optimizer_state_roundtrips_without_pickle_and_old_files_are_checked(tmp_path):
    cfg = tiny_cfg()
    model, temperature, opt, sched = build_training(cfg, torch.device("cpu"))
    train_step(TrainingModule(model, temperature, cfg), opt, sched, make_batch(rows(), random.Random(0), 224), cfg)
    path = save_checkpoint(tmp_path / "step-000001", model, temperature, opt, sched, 1, cfg)
    assert not (path / "optimizer.pt").exists() and (path / "optimizer.json").exists()
    fresh, t2, opt2, sched2 = build_training(cfg, torch.device("cpu"))
    load_checkpoint(path, fresh, t2, opt2, sched2)
    want, got = opt.state_dict(), opt2.state_dict()
    assert want["param_groups"] == got["param_groups"] and sched.state_dict() == sched2.state_dict()
    assert want["state"].keys() == got["state"].keys()
    for k, state in want["state"].items():
        assert all(torch.equal(v, got["state"][k][name]) for name, v in state.items())
    # a checkpoint from before the format: optimizer.pt of plain tensors and containers still loads
    (path / "optimizer.json").unlink()
    (path / "optimizer.safetensors").unlink()
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, path / "optimizer.pt")
    assert load_checkpoint(path, fresh, t2, opt2, sched2) == 1
    # ... but one that needs pickle to rebuild an object is refused, with what to do instead
    torch.save({"optimizer": _NotPlainData(), "scheduler": {}}, path / "optimizer.pt")
    with pytest.raises(ValueError, match="refusing an optimizer state.*train.init_from"):
        load_checkpoint(path, fresh, t2, opt2, sched2)
