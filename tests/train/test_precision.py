"""bf16 training (train.precision): fp32 master weights and optimizer state, frozen weights stored in
bf16, a loss close to fp32's, the precision chosen by hardware, and DDP on Ray Train in bf16."""

from __future__ import annotations

import random

import pytest
import torch
from safetensors.torch import load_file

from moon_ray.config import load_config
from moon_ray.configlib import ConfigError
from moon_ray.models import precision
from moon_ray.models.embedder import MoonEmbedder
from moon_ray.train.task import TrainingModule, make_batch, training_forward
from moon_ray.train.worker import build_training, train_step
from tests.models.batches import rows
from tests.train.test_model_and_step import tiny_cfg


def test_auto_picks_bf16_only_where_bf16_matmuls_are_fast(monkeypatch):
    cpu = torch.device("cpu")
    assert precision.compute_dtype("fp32", cpu) == torch.float32
    assert precision.compute_dtype("bf16", cpu) == torch.bfloat16
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert precision.compute_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)  # AVX512-BF16 alone is not enough
    assert precision.compute_dtype("auto", cpu) == torch.float32
    with pytest.raises(ValueError, match="precision"):
        precision.compute_dtype("fp16", cpu)
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(None, ["train.precision=fp16"])


def test_compute_weights_swaps_in_copies_and_restores_the_fp32_parameters():
    model = MoonEmbedder(tiny_cfg().model).set_precision(torch.bfloat16)
    params = {n: p for n, p in model.named_parameters()}
    weight = model.projector.mlp[0].weight
    with model.compute_weights():
        assert model.projector.mlp[0].weight.dtype == torch.bfloat16
        assert not isinstance(model.projector.mlp[0].weight, torch.nn.Parameter)
        with model.compute_weights():  # nested: the same copies
            inner = model.projector.mlp[0].weight
        assert inner is model.projector.mlp[0].weight
        out = model(pixels=torch.randn(2, 3, 224, 224), texts=["a b", "c"])
        out.embedding.sum().backward()
    assert out.embedding.dtype == torch.float32  # embeddings (and so InfoNCE logits) are fp32
    assert model.projector.mlp[0].weight is weight and weight.grad.dtype == torch.float32
    assert {n: p for n, p in model.named_parameters()}.keys() == params.keys()
    assert all(params[n] is p for n, p in model.named_parameters())


def test_bf16_step_moves_fp32_masters_keeps_frozen_bf16_and_fp32_optimizer_state():
    cfg = tiny_cfg("train.precision=bf16")
    model, temperature, opt, sched = build_training(cfg, torch.device("cpu"))
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert all(p.dtype == torch.float32 for p in trainable.values())
    assert {p.dtype for n, p in frozen.items() if n.startswith("lm.")} == {torch.bfloat16}
    step = TrainingModule(model, temperature, cfg)
    for _ in range(2):
        metrics = train_step(step, opt, sched, make_batch(rows(), random.Random(0), 224), cfg)
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    after = dict(model.named_parameters())
    assert all(after[n].dtype == torch.float32 and after[n].grad.dtype == torch.float32 for n in trainable)
    moved = [n for n in trainable if not torch.equal(trainable[n], after[n])]
    assert any("lora_B" in n for n in moved) and any(n.startswith("projector.") for n in moved)
    assert any(n.startswith("head.") for n in moved) and any(n.startswith("fusion.") for n in moved)
    assert all(torch.equal(frozen[n], after[n]) for n in frozen)
    state = [v for s in opt.state.values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq")]
    assert state and all(v.dtype == torch.float32 for v in state)


def test_bf16_losses_match_fp32_on_a_fixed_batch():
    """The same weights and batch, dropout off: each loss term within 2 % of fp32's.

    Why 2 %: bf16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.2 % per stored value), and
    the tiny model's terms came out 0.1-0.6 % apart; the embeddings enter the fp32 InfoNCE with
    cosine ≥ 0.99 to fp32's. Computing the logits in bf16 instead (cos/τ up to 20, rounded to
    steps of 0.125) or losing the fp32 masters would show as larger gaps on these terms."""
    losses, embeds = {}, {}
    batch = make_batch(rows(8), random.Random(0), 224)
    for p in ("fp32", "bf16"):
        cfg = tiny_cfg(f"train.precision={p}", "model.lm.lora.dropout=0")
        model, temperature, _, _ = build_training(cfg, torch.device("cpu"))
        with torch.no_grad():
            for name, q in sorted(model.named_parameters()):  # off the initialisation: LoRA B is zero
                if q.requires_grad:
                    q.add_(0.02 * torch.randn(q.shape, generator=torch.Generator().manual_seed(len(name))))
            terms, _ = training_forward(model.eval(), temperature, batch, cfg)
            embeds[p] = model(pixels=model.pixels(batch.images), texts=batch.titles).embedding
        losses[p] = {k: float(v) for k, v in terms.items() if k != "moe_loss"}
    for k, v in losses["fp32"].items():
        assert losses["bf16"][k] == pytest.approx(v, rel=0.02), (k, losses)
    cosine = (embeds["fp32"] * embeds["bf16"]).sum(-1)
    assert float(cosine.min()) > 0.99


def test_bf16_ddp_training_on_ray_checkpoints_fp32_weights(ray_local, real_slice, tmp_path):
    """Two DDP ranks in bf16 (gloo all-reduces the fp32 gradients), checkpoint and export: the saved
    trainable weights are fp32 and the losses finite."""
    from moon_ray.train.driver import run_train
    from tests.train.test_train_driver import contrastive_cfg
    from tests.train.tiny_lm import write_tiny_lm

    tiny = write_tiny_lm(tmp_path / "tiny-lm", scale=2.0)
    summary = run_train(contrastive_cfg(tiny, real_slice, tmp_path / "run", "train.steps=2", "train.precision=bf16"))
    assert [h["step"] for h in summary["history"]] == [1, 2]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in summary["history"])
    exported = load_file(str(tmp_path / "run" / "export" / "trainable.safetensors"))
    assert exported and all(t.dtype == torch.float32 for t in exported.values())


def test_bf16_joint_step_rewards_grpo_and_updates(ray_local, tmp_path):
    """Joint training in bf16: prompt embeddings go to a fp32 rollout engine, the reward pass and the
    GRPO pass (the LM called directly, outside the embedder's forward) run on the step's bf16 copies,
    and GRPO moves the adapters of a layer only it reaches."""
    from moon_ray.train.joint import JointTrainingModule
    from tests.train.test_joint import joint_step_inputs
    from tests.train.tiny_lm import write_tiny_lm

    tiny = write_tiny_lm(tmp_path / "tiny-lm", seed=1, scale=2.0)
    cfg, (model, temperature, opt, sched), batch, rollouts = joint_step_inputs(tiny, "train.precision=bf16")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n and ".layers.3." in n}
    metrics = train_step(JointTrainingModule(model, temperature, cfg), opt, sched, batch, cfg, rollouts)
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in ("loss", "grpo_loss", "reward_mean"))
    after = dict(model.named_parameters())
    assert before and any(not torch.equal(before[n], after[n]) for n in before)
    assert all(after[n].dtype == torch.float32 for n in before)
