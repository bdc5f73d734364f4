"""Exported model directories: load back as an Encoder; PEFT loads the adapter on the base LM."""

from __future__ import annotations

import numpy as np
import torch

from moon_ray.config import load_config
from moon_ray.models.encoder import get_encoder
from moon_ray.models.export import export_model
from moon_ray.train.checkpoint import save_checkpoint
from moon_ray.train.worker import build_training
from tests.catalog.fixtures import image_bytes
from tests.train.tiny_lm import write_tiny_lm


def make_export(tmp_path, *extra):
    lm_dir = write_tiny_lm(tmp_path / "lm")
    cfg = load_config(None, [f"model.lm.path={lm_dir}", "model.vision.name=tiny", "model.vision.pretrained=false",
                             "model.embed_dim=32", "model.matryoshka=[16,32]", *extra])
    model, temperature, opt, sched = build_training(cfg, torch.device("cpu"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    save_checkpoint(tmp_path / "ckpt" / "step-000003", model, temperature, opt, sched, 3, cfg)
    return export_model(tmp_path / "ckpt" / "step-000003", tmp_path / "export"), model, lm_dir


def test_export_roundtrip_same_embeddings(tmp_path):
    path, model, _ = make_export(tmp_path)
    enc = get_encoder(str(path))
    img = image_bytes(size=(64, 64))
    got = enc.encode_products([img], ["Nike Men Red Shoes"])
    model.eval()
    with torch.no_grad():
        want = model(pixels=model.pixels([img]), texts=["Nike Men Red Shoes"]).embedding.numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    q = enc.encode([None, img, img], ["Men Red Shoes", None, "Red Shoes"])
    assert q.shape == (3, 32) and np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)


def test_peft_loads_the_exported_adapter(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path, model, lm_dir = make_export(tmp_path)
    base = AutoModelForCausalLM.from_pretrained(lm_dir)
    peft_model = PeftModel.from_pretrained(base, path / "adapter")
    ours = dict(model.lm.named_parameters())
    theirs = dict(peft_model.named_parameters())
    lora = [n for n in ours if "lora_B" in n]
    assert lora and all(torch.equal(ours[n], theirs[n]) for n in lora)


def test_joint_model_embeds_products_with_generated_reasoning(tmp_path):
    path, _, _ = make_export(tmp_path, "rollout.enabled=true", "rollout.max_tokens=4")
    enc = get_encoder(str(path))
    assert enc.reasoning
    img = image_bytes(size=(64, 64))
    with_trace = enc.encode_products([img], ["Nike Men Red Shoes"])
    enc.reasoning = False
    without = enc.encode_products([img], ["Nike Men Red Shoes"])
    assert not np.allclose(with_trace, without)
