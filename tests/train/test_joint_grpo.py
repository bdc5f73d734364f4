"""GRPO that acts (several optimizer steps per rollout batch, reference = the run's start, kl_coef=0
skips it), the hard-negative bank, the embed-trace rule and the SFT cold start, with tiny models."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from moon_ray.config import load_config
from moon_ray.rollout.base import Rollout
from moon_ray.train import joint
from moon_ray.train.joint import JointTrainingModule, RolloutBatch, RolloutSide
from moon_ray.train.negatives import NegativeBank
from moon_ray.train.policy import ReferencePolicy, pack_traces, policy_logprobs
from moon_ray.train.sft import SftBatch, rationale_tokens
from moon_ray.train.task import make_batch
from moon_ray.train.worker import build_training, train_step
from tests.catalog.fixtures import image_bytes
from tests.train.tiny_lm import write_tiny_lm

COLOURS = ["Red", "Blue", "Green", "Black"]


def rows(n: int = 4) -> dict:
    return {
        "id": np.array([f"p{i}" for i in range(n)], dtype=object),
        "title": np.array([f"Brand{i} Men {COLOURS[i % 4]} Shirt" for i in range(n)], dtype=object),
        "image": np.array([image_bytes(size=(64, 64), colour=(50 * i % 255, 90, 200)) for i in range(n)], dtype=object),
        "gender": np.array(["Men"] * n, dtype=object),
        "colour": np.array([COLOURS[i % 4] for i in range(n)], dtype=object),
        "article_type": np.array(["Shirts" if i % 2 else "Tshirts" for i in range(n)], dtype=object),
        "brand": np.array([f"Brand{i}" for i in range(n)], dtype=object),
        "season": np.array(["Summer" if i % 2 else "Winter" for i in range(n)], dtype=object),
        "usage": np.array(["Casual"] * n, dtype=object),
        "material": np.array([None] * n, dtype=object),
    }


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return write_tiny_lm(tmp_path_factory.mktemp("tiny-lm-grpo"), seed=1, scale=2.0)


def cfg_for(lm_dir, *extra):
    return load_config(None, [
        f"model.lm.path={lm_dir}", "model.vision.name=tiny", "model.vision.pretrained=false", "model.embed_dim=32",
        "model.matryoshka=[16,32]", "model.lm.embed_layers=2", "train.batch_size=4", "train.warmup_steps=0",
        "train.lr=0.01", "rollout.enabled=true", "rollout.engine=torch", "rollout.group_size=3", "rollout.max_tokens=6",
        "rollout.bank_size=0", *extra,
    ])


def synthetic_rollouts(b: int, g: int, vocab: int, seed: int = 0) -> RolloutBatch:
    """B × G traces of random tokens (distinct, so rewards and advantages differ within a group)."""
    rng = random.Random(seed)
    traces = [[Rollout(token_ids=[rng.randrange(10, vocab) for _ in range(5)], text=f"trace {i} {j} {rng.random():.3f} red",
                       logprobs=[0.0] * 5, version=0) for j in range(g)] for i in range(b)]
    return RolloutBatch(traces=traces, trainer_version=0)


def test_bank_neighbours_exclude_the_product_itself():
    n = 6
    bank_rows = {"id": [f"b{i}" for i in range(n)], "title": [f"t{i}" for i in range(n)], "image": [b""] * n,
                 "article_type": ["Shirts", "Shirts", "Watches", "Watches", "Shirts", "Watches"]}
    bank = NegativeBank(bank_rows, neighbours=2, same_category=1, refresh_every=5, seed=0)
    angles = torch.tensor([0.0, 0.1, 0.2, 1.5, 3.0, 0.15])
    emb = torch.stack([angles.cos(), angles.sin()], dim=1)
    assert bank.due(0)
    bank.set_embeddings(emb, step=0)
    assert not bank.due(4) and bank.due(5)
    # product b0 itself: nearest are b0 (itself, excluded), b1 (0.1), b5 (0.15); same category: b1 or b4
    picked = bank.candidates(emb[:1], ["b0"], ["Shirts"])
    assert 0 not in picked and {1, 5} <= set(picked) and set(picked) <= {1, 4, 5}
    # a product that is not in the bank gets its 2 nearest (b3 at the same angle, then b2)
    assert bank.candidates(emb[3:4], ["other"], ["Bags"]) == [2, 3]
    vecs, ids, fields = bank.rows([1, 5])
    assert ids == ["b1", "b5"] and torch.equal(vecs, emb[[1, 5]]) and fields[0]["article_type"] == "Shirts"


def test_bank_refresh_embeds_the_catalog_sample(lm_dir, real_slice):
    cfg = cfg_for(lm_dir, f"data.output_dir={real_slice}", "rollout.bank_size=20", "rollout.bank_neighbours=3")
    model, *_ = build_training(cfg, torch.device("cpu"))
    bank = NegativeBank.from_catalog(cfg)
    assert len(bank) == 20 and all(f["season"] for f in bank.fields)
    with torch.no_grad():
        bank.refresh(model, step=0)
    assert bank.embeddings.shape == (20, 32)
    picked = bank.candidates(bank.embeddings[:2], bank.ids[:2], [f["article_type"] for f in bank.fields[:2]])
    assert 0 not in picked and 1 not in picked and len(picked) >= 3


def test_second_grpo_step_moves_the_ratio_and_clips(lm_dir):
    cfg = cfg_for(lm_dir, "rollout.grpo_epochs=2", "rollout.grpo_minibatches=1", "rollout.clip_eps=0.02",
                  "rollout.kl_coef=0", "rollout.embed_trace=first")
    model, temperature, opt, sched = build_training(cfg, torch.device("cpu"))
    batch = make_batch(rows(4), random.Random(0), 224)
    rollouts = synthetic_rollouts(4, 3, len(model.tokenizer))
    module = JointTrainingModule(model, temperature, cfg)
    metrics = train_step(module, opt, sched, batch, cfg, rollouts)
    assert metrics["grpo_passes"] == 2.0
    assert metrics["grpo_ratio_last"] != pytest.approx(1.0, abs=1e-6)  # the second step sees a moved policy
    assert metrics["grpo_clip_frac_last"] > 0.0
    for key in ("contrastive_group_std", "format_group_std", "reward_contrastive", "format_penalty", "grpo_clip_frac"):
        assert key in metrics, key


def test_minibatches_fix_the_old_policy_before_the_first_step(lm_dir):
    cfg = cfg_for(lm_dir, "rollout.grpo_minibatches=2", "rollout.kl_coef=0", "rollout.embed_trace=first")
    model, temperature, opt, sched = build_training(cfg, torch.device("cpu"))
    batch = make_batch(rows(4), random.Random(0), 224)
    module = JointTrainingModule(model, temperature, cfg)
    (scored,) = module.prepare(batch, synthetic_rollouts(4, 3, len(model.tokenizer)))
    assert module.update_passes(scored) == 2 and set(scored.old_logp) == {1}  # chunk 0: its own first pass


def test_kl_coef_zero_never_runs_the_reference_pass(lm_dir, monkeypatch):
    calls = {"at_start": 0, "logprobs": 0}
    real_at_start, real_logprobs = ReferencePolicy.at_start.__func__, ReferencePolicy.logprobs

    def counting_at_start(cls, *a, **k):
        calls["at_start"] += 1
        return real_at_start(cls, *a, **k)

    def counting_logprobs(self, *a, **k):
        calls["logprobs"] += 1
        return real_logprobs(self, *a, **k)

    monkeypatch.setattr(ReferencePolicy, "at_start", classmethod(counting_at_start))
    monkeypatch.setattr(ReferencePolicy, "logprobs", counting_logprobs)
    monkeypatch.setattr(joint, "generate_phase", lambda model, pool, batch, cfg, trainer_version, seed:
                        synthetic_rollouts(len(batch.titles), cfg.rollout.group_size, len(model.tokenizer)))
    data = rows(4)
    for kl, want in (("0", 0), ("0.04", 1)):
        cfg = cfg_for(lm_dir, f"rollout.kl_coef={kl}", "rollout.embed_trace=first")
        model, temperature, opt, sched = build_training(cfg, torch.device("cpu"))
        side = RolloutSide(pool=None, cfg=cfg, rank=1)  # rank 1: no weight transport
        side.start(model, 0, False)
        batch = make_batch(data, random.Random(0), 224)
        (rollouts,) = side.generate(model, batch, 0, joint.PhaseTimer(), data)
        train_step(JointTrainingModule(model, temperature, cfg), opt, sched, batch, cfg, rollouts)
        assert calls == {"at_start": want, "logprobs": want}, (kl, calls)
        assert (rollouts.ref_logp is None) == (want == 0)


def test_reference_is_the_start_policy_not_adapters_off(lm_dir):
    cfg = cfg_for(lm_dir)
    model, *_ = build_training(cfg, torch.device("cpu"))
    model.eval()  # no LoRA dropout: the same weights give the same numbers
    with torch.no_grad():  # as if train.init_from loaded a trained model: adapters far from zero
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    batch = make_batch(rows(2), random.Random(0), 224)
    flat = [x for g in synthetic_rollouts(2, 3, len(model.tokenizer)).traces for x in g]
    ids, mask, _ = pack_traces(flat, model.tokenizer.pad_token_id, model.device)
    pixels = model.pixels(batch.images)
    with torch.no_grad():
        at_start = policy_logprobs(model, pixels, batch.titles, ids, mask, 3)
        with model.lm.disable_adapter():
            adapters_off = policy_logprobs(model, pixels, batch.titles, ids, mask, 3)
    ref = ReferencePolicy.at_start(model, cfg, step=0)
    with torch.no_grad():  # training moves the policy
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    got = ref.logprobs(model, pixels, batch.titles, ids, mask, 3)
    assert torch.allclose(got, at_start, atol=1e-5)
    assert not torch.allclose(got, adapters_off, atol=1e-3)
    with torch.no_grad():
        moved = policy_logprobs(model, pixels, batch.titles, ids, mask, 3)
    assert not torch.allclose(moved, at_start, atol=1e-3)  # the swap put the live weights back


def test_product_is_embedded_with_its_embed_trace_not_the_best_rewarded(lm_dir, monkeypatch):
    cfg = cfg_for(lm_dir, "rollout.kl_coef=0", "rollout.grpo_minibatches=1")
    model, temperature, opt, sched = build_training(cfg, torch.device("cpu"))
    batch = make_batch(rows(4), random.Random(0), 224)
    rollouts = synthetic_rollouts(4, 3, len(model.tokenizer))
    rollouts.embed_traces = joint.embed_traces(model, batch, rollouts, cfg)  # greedy, as evaluation makes them
    from moon_ray.models.reasoning import generate_reasoning

    model.eval()  # as evaluation generates: no dropout
    with torch.no_grad():
        greedy = generate_reasoning(model, model.pixels(batch.images), batch.titles, max_new_tokens=6)
    model.train()
    assert rollouts.embed_traces == greedy and model.training
    seen = []
    real = joint.training_forward
    monkeypatch.setattr(joint, "training_forward", lambda *a, reasoning=None, **k: seen.append(reasoning) or real(*a, reasoning=reasoning, **k))
    train_step(JointTrainingModule(model, temperature, cfg), opt, sched, batch, cfg, rollouts)
    assert seen == [greedy]
    first = cfg_for(lm_dir, "rollout.embed_trace=first")
    assert joint.embed_traces(model, batch, rollouts, first) == [g[0].text for g in rollouts.traces]


def test_sft_step_trains_the_lm_on_rationales(lm_dir):
    cfg = cfg_for(lm_dir, "rollout.sft_steps=1")
    model, temperature, opt, sched = build_training(cfg, torch.device("cpu"))
    data = rows(4)
    side = RolloutSide(pool=None, cfg=cfg, rank=1)
    batch = make_batch(data, random.Random(0), 224)
    (item,) = side.generate(model, batch, 0, joint.PhaseTimer(), data)
    assert isinstance(item, SftBatch) and all(("summer" in r.lower()) or ("winter" in r.lower()) for r in item.rationales)
    ids, mask = rationale_tokens(model.tokenizer, item.rationales, 5, "cpu")
    assert (ids[mask.bool()].view(-1) == model.tokenizer.eos_token_id).sum() == 4  # each ends with the end token
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n and ".layers.3." in n}
    module = JointTrainingModule(model, temperature, cfg)
    first = train_step(module, opt, sched, batch, cfg, item)
    assert "sft_loss" in first and "text_loss" in first and "grpo_loss" not in first
    after = dict(model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)  # layer 3 learns only from the LM loss
    for _ in range(3):
        last = train_step(module, opt, sched, batch, cfg, item)
    assert last["sft_nll"] < first["sft_nll"]
    assert side.after_step(model, 1, joint.PhaseTimer()) == {}  # rank 1 never syncs


def test_merge_pass_metrics_averages_grpo_and_keeps_the_last_ratio():
    passes = [{"text_loss": 1.0, "grpo_ratio": 1.0, "grpo_clip_frac": 0.0, "grad_norm": 3.0},
              {"grpo_ratio": 1.2, "grpo_clip_frac": 0.5, "grad_norm": 5.0}]
    out = joint.merge_pass_metrics(passes)
    assert out["text_loss"] == 1.0 and out["grad_norm"] == 3.0 and out["grpo_passes"] == 2.0
    assert out["grpo_ratio"] == pytest.approx(1.1) and out["grpo_clip_frac"] == pytest.approx(0.25)
    assert out["grpo_ratio_last"] == 1.2 and out["grpo_clip_frac_last"] == 0.5


def test_rank0_syncs_when_grpo_starts_after_sft_and_then_every_interval(lm_dir, monkeypatch):
    synced = []
    monkeypatch.setattr(joint, "sync_phase", lambda model, pool, version, transport: synced.append(version) or {})
    cfg = cfg_for(lm_dir, "rollout.sft_steps=2", "rollout.sync_interval=3")
    side = RolloutSide(pool=None, cfg=cfg, rank=0)
    for step in range(1, 8):
        side.after_step(None, step, joint.PhaseTimer())
    assert synced == [2, 3, 6]  # none during SFT, the SFT weights when GRPO starts, then every 3 steps


@pytest.mark.parametrize("checkpointing", [False, True])
def test_grpo_grad_layers_trains_only_the_top_layers_with_the_same_logprobs(lm_dir, checkpointing):
    cfg = cfg_for(lm_dir, f"train.gradient_checkpointing={str(checkpointing).lower()}", "model.lm.lora.dropout=0")
    model, _, _, _ = build_training(cfg, torch.device("cpu"))
    model.train()
    flat = [x for g in synthetic_rollouts(2, 3, len(model.tokenizer)).traces for x in g]
    ids, mask, _ = pack_traces(flat, model.tokenizer.pad_token_id, model.device)
    pixels = model.pixels([image_bytes(size=(64, 64), colour=(c, 90, 200)) for c in (10, 200)])
    titles = ["Brand0 Men Red Shirt", "Brand1 Men Blue Shirt"]

    def grads(k: int) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
        model.zero_grad(set_to_none=True)
        logp = policy_logprobs(model, pixels, titles, ids, mask, 3, grad_layers=k)
        (logp * mask).sum().backward()
        assert torch.is_grad_enabled()  # restored after the pass
        return logp.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    full, every = grads(0)
    top, some = grads(1)  # the tiny LM has 4 decoder layers: only layers.3 gets gradients
    torch.testing.assert_close(top, full)
    lora = {n: g for n, g in some.items() if "lora_" in n and ".layers." in n}
    assert lora and all((g is not None) == (".layers.3." in n) for n, g in lora.items())  # below: no graph at all
    assert all(g is None for n, g in some.items() if "projector" in n)  # the prompt's visual tokens: no GRPO grad
    assert any(g is not None and g.abs().sum() > 0 for n, g in every.items() if "projector" in n)
    for n, g in lora.items():
        if ".layers.3." in n:
            torch.testing.assert_close(g, every[n])  # the top layer's gradient is the full pass's
