"""The dual-encoder baseline (model.arch=dual): one space for every input kind, trains only its heads with
the MOON objectives, survives checkpoint -> export -> get_encoder, and refuses joint training.

The text tower is the real packaged MiniLM (a few seconds to load); the vision tower is the tiny one,
except in the test of a partly fine-tuned EfficientNet-Lite0."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from moon_ray.config import ConfigError, load_config
from moon_ray.models.dual import DualEncoder
from moon_ray.models.encoder import get_encoder
from moon_ray.models.export import MoonEncoder, export_model
from moon_ray.models.factory import build_embedder
from moon_ray.models.temperature import Temperature
from moon_ray.train.checkpoint import save_checkpoint
from moon_ray.train.task import make_batch, training_forward
from tests.catalog.fixtures import image_bytes
from tests.models.batches import rows

TINY_DUAL = ["model.arch=dual", "model.vision.name=tiny", "model.vision.pretrained=false", "model.embed_dim=32",
             "model.matryoshka=[16,32]", "model.dual_head_hidden=64", "train.batch_size=4"]
HEADS = ("image_head.", "text_head.", "mix_logit")


def dual_cfg(*extra):
    return load_config(None, [*TINY_DUAL, *extra])


def optimiser(model, temperature, lr=3e-3):
    params = [p for p in [*model.parameters(), *temperature.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


def step(model, temperature, opt, batch, cfg) -> float:
    losses, _ = training_forward(model, temperature, batch, cfg)
    total = sum(v for k, v in losses.items() if k.endswith("_loss"))
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    return float(total.detach())


def test_text_image_and_image_text_land_in_one_unit_space():
    cfg = dual_cfg()
    model = build_embedder(cfg).eval()
    assert isinstance(model, DualEncoder) and not model.can_reason
    x = model.pixels([image_bytes(size=(64, 64)), image_bytes(size=(64, 64), colour=(10, 200, 10))])
    titles = ["Nike Men Red Shoes", "Puma Women Green Top"]
    with torch.no_grad():
        img = model(pixels=x, modality="image", is_query=True)
        txt = model(texts=titles, modality="text")
        mm = model(pixels=x, texts=titles)
        query = model(texts=titles, modality="text", is_query=True)
        with pytest.raises(ValueError, match="reasoning"):
            model(pixels=x, texts=titles, reasoning=["red", "green"])
    for out in (img, txt, mm, query):
        assert out.embedding.shape == (2, 32) and out.raw.shape == (2, 32) and float(out.aux_loss) == 0.0
        assert torch.allclose(out.embedding.norm(dim=-1), torch.ones(2), atol=1e-5)
    # image + text is the gated mix of the two unit head outputs (α = sigmoid(0) = 0.5 at initialisation)
    unit = torch.nn.functional.normalize
    assert torch.allclose(mm.raw, 0.5 * unit(img.raw, dim=-1) + 0.5 * unit(txt.raw, dim=-1), atol=1e-6)
    with torch.no_grad():
        model.mix_logit.fill_(2.0)
        mixed = model(pixels=x, texts=titles).raw
    a = torch.sigmoid(torch.tensor(2.0))
    assert torch.allclose(mixed, a * unit(img.raw, dim=-1) + (1 - a) * unit(txt.raw, dim=-1), atol=1e-6)
    assert not torch.allclose(query.raw, txt.raw, atol=1e-4)  # query and product prefixes differ, as in MOON


def test_a_few_steps_lower_the_loss_and_move_only_the_heads():
    cfg = dual_cfg()
    model = build_embedder(cfg).train()
    temperature = Temperature(cfg.train.temperature, cfg.train.learn_temperature)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(HEADS) for n in trainable), trainable
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt, _ = optimiser(model, temperature)
    batch = make_batch(rows(4), random.Random(1), cfg.model.vision.image_size)
    losses = [step(model, temperature, opt, batch, cfg) for _ in range(6)]
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses
    after = dict(model.named_parameters())
    frozen = [n for n in before if n not in trainable]
    assert any(n.startswith("tower.") for n in frozen) and any(n.startswith("text_tower.") for n in frozen)
    assert all(torch.equal(before[n], after[n]) for n in frozen)
    moved = {n for n in trainable if not torch.equal(before[n], after[n])}
    assert moved == trainable, trainable - moved


def test_top_text_layers_train_when_asked_and_the_rest_stays_put():
    cfg = dual_cfg("model.dual_text_trainable_layers=1")
    model = build_embedder(cfg).train()
    temperature = Temperature(cfg.train.temperature, False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("text_tower.encoder.layer.5.") for n in trainable)
    assert not any(n.startswith(("text_tower.encoder.layer.4.", "text_tower.embeddings.", "tower.")) for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt, _ = optimiser(model, temperature)
    step(model, temperature, opt, make_batch(rows(4), random.Random(0), 224), cfg)
    after = dict(model.named_parameters())
    assert all(torch.equal(before[n], after[n]) == (n not in trainable) for n in before)


def test_checkpoint_export_and_get_encoder_give_the_in_memory_vectors(tmp_path):
    cfg = dual_cfg()
    model = build_embedder(cfg).train()
    temperature = Temperature(cfg.train.temperature, cfg.train.learn_temperature)
    opt, sched = optimiser(model, temperature)
    for _ in range(2):
        step(model, temperature, opt, make_batch(rows(4), random.Random(0), 224), cfg)
    ckpt = save_checkpoint(tmp_path / "ckpt" / "step-000002", model, temperature, opt, sched, 2, cfg)
    assert not (ckpt / "adapter").exists()
    path = export_model(ckpt, tmp_path / "export")
    assert json.loads((path / "MOON_MODEL").read_text())["arch"] == "dual"
    enc = get_encoder(str(path))
    assert isinstance(enc.model, DualEncoder) and enc.dim == 32 and not enc.reasoning
    img, title = image_bytes(size=(64, 64)), "Nike Men Red Shoes"
    model.eval()
    with torch.no_grad():
        x = model.pixels([img])
        want = torch.cat([model(pixels=x, texts=[title]).embedding, model(texts=["red shoes"], is_query=True).embedding,
                          model(pixels=x, is_query=True).embedding, model(pixels=x, texts=["red"], is_query=True).embedding])
    got = np.concatenate([enc.encode_products([img], [title]), enc.encode([None, img, img], ["red shoes", None, "red"])])
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
    assert enc.model.mix_logit.item() == model.mix_logit.item() != 0.0  # the trained gate came back
    with pytest.raises(ValueError, match="reasoning"):
        MoonEncoder(path, reasoning=True)


def test_dual_refuses_joint_training_and_bad_settings():
    with pytest.raises(ConfigError, match="rollout.enabled=false"):
        build_embedder(dual_cfg("rollout.enabled=true"))  # refused before any weights load
    for bad in (["model.arch=clip"], ["model.arch=dual", "model.vision.trainable=true"],
                ["model.arch=dual", "model.vision.name=tiny", "model.dual_image_trainable_blocks=2"],
                ["model.dual_head_hidden=-1"]):
        with pytest.raises(ConfigError):
            load_config(None, bad)
    with pytest.raises(ConfigError, match="6 layers"):
        build_embedder(dual_cfg("model.dual_text_trainable_layers=7"))


def test_partly_fine_tuned_efficientnet_trains_its_top_block_in_bf16():
    cfg = load_config(None, ["model.arch=dual", "model.dual_image_trainable_blocks=1"])
    model = build_embedder(cfg).train().set_precision(torch.bfloat16)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("tower.net._blocks.15.") for n in trainable) and "tower.net._conv_head.weight" in trainable
    assert not any(n.startswith(("tower.net._blocks.14.", "tower.net._conv_stem", "text_tower.")) for n in trainable)
    assert model.text_tower.embeddings.word_embeddings.weight.dtype == torch.bfloat16
    x = model.pixels([image_bytes(size=(64, 64))] * 2)
    out = model(pixels=x, texts=["Nike Men Red Shoes", "Puma Women Green Top"])
    assert out.raw.dtype == torch.float32 and out.embedding.shape == (2, 256)
    (out.embedding * torch.linspace(-1, 1, 256)).sum().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == trainable
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
