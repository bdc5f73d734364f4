"""Creative4U stage 2 pieces without Ray: the rewards of sampled answers against hand-derived values, one
GRPO step of the selector through the shared `train_step` (answers given, as the pool returns them), and
the checks that keep stage grpo on an SFT selector."""

from __future__ import annotations

import json

import pytest
import torch

from moon_ray.config import load_config
from moon_ray.configlib import ConfigError
from moon_ray.creative.grpo import (
    AnswerGroups,
    CreativeGRPOModule,
    answer_logprobs,
    informative_groups,
    score_answers,
    select_groups,
)
from moon_ray.rollout.base import Rollout
from tests.creative.test_pieces import jpeg, product_shot

TINY = ["model.vision.name=tiny", "model.vision.pretrained=false", "model.lm.tiny=true", "model.lm.lora.r=4",
        "model.lm.lora.dropout=0.0"]
RIGHT, WRONG, BROKEN = "<think>A is sharp.</think><answer>A</answer>", "<think>B is sharp.</think><answer>B</answer>", "A!"


def rollout(text: str, version: int = 0) -> Rollout:
    return Rollout(token_ids=[1] * len(text.split()), text=text, logprobs=[], version=version)


def test_rewards_of_sampled_answers_by_hand():
    groups = [[rollout(RIGHT), rollout(WRONG), rollout(BROKEN)], [rollout(WRONG), rollout(WRONG), rollout(WRONG)]]
    rewards, m = score_answers(groups, ["A", "A"], format_weight=0.1)
    assert torch.allclose(rewards, torch.tensor([[1.1, 0.1, -0.1], [0.1, 0.1, 0.1]]))
    assert m["accuracy"] == pytest.approx(1 / 6) and m["well_formed"] == pytest.approx(5 / 6)
    assert m["reward_mean"] == pytest.approx((1.1 + 0.1 - 0.1 + 0.3) / 6)
    # group 1: std of (1.1, 0.1, -0.1) = sqrt(0.2822…) (population), group 2: 0 -> mean of the two
    assert m["reward_group_std"] == pytest.approx(torch.tensor([1.1, 0.1, -0.1]).std(unbiased=False).item() / 2)
    assert m["zero_std_groups"] == 0.5 and m["chose_A"] == pytest.approx(1 / 5)


def answers_for(selector, batch: dict, texts: list[list[str]]) -> AnswerGroups:
    """Answers as the pool returns them (token ids ending in EOS, the sampler's log-probs), sampled by the
    selector's current weights: version 0, the step's trainer version."""
    tok = selector.tokenizer
    flat = [Rollout(tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id], t, [], 0) for g in texts for t in g]
    with torch.no_grad():
        lp, _, mask, _ = answer_logprobs(selector, batch, range(len(texts)), flat, len(texts[0]))
    for r, row, m in zip(flat, lp, mask, strict=True):
        r.logprobs = row[m.bool()].tolist()
    g = len(texts[0])
    return AnswerGroups([flat[i:i + g] for i in range(0, len(flat), g)], list(batch["label"]), trainer_version=0,
                        ref_logp=lp)


def test_grpo_steps_raise_the_rewarded_answer_through_the_shared_train_step():
    from moon_ray.creative.sft import build_selector
    from moon_ray.creative.trainer import step_config
    from moon_ray.train.worker import train_step

    cfg = load_config(None, [*TINY, "rollout.group_size=2", "rollout.grpo_minibatches=2", "rollout.kl_coef=0.04"])
    selector = build_selector(cfg).train()
    shots = [jpeg(product_shot(64)), jpeg(product_shot(48))]
    batch = {"image_a": shots, "image_b": shots[::-1], "interest": ["casual", ""], "label": ["A", "A"]}
    texts = [[RIGHT, WRONG], [RIGHT, WRONG]]  # the right answer first in each group
    params = [p for p in selector.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    module = CreativeGRPOModule(selector, cfg)

    def margin(answers: AnswerGroups) -> float:  # mean log-prob of the right answers minus the wrong ones
        with torch.no_grad():
            lp, _, mask, _ = answer_logprobs(selector, batch, range(2), [r for g in answers.groups for r in g], 2)
        seq = (lp * mask).sum(1).view(2, 2)
        return float((seq[:, 0] - seq[:, 1]).mean())

    answers = answers_for(selector, batch, texts)
    before = margin(answers)
    lora_before = {n: p.detach().clone() for n, p in selector.named_parameters() if "lora_B" in n}
    metrics = train_step(module, opt, sched, batch, step_config(cfg), answers)
    for key in ("grpo_loss", "reward_mean", "accuracy", "reward_group_std", "grpo_kl", "grpo_clip_frac", "grpo_ratio",
                "version_lag", "time_reward", "time_update"):
        assert key in metrics, key
    assert metrics["grpo_passes"] == 2.0 and metrics["accuracy"] == 0.5 and metrics["version_lag"] == 0.0
    assert metrics["reward_mean"] == pytest.approx(0.6)  # (1.1 + 0.1) / 2 in both groups
    assert 0.0 <= metrics["grpo_kl"] < 0.5
    for _ in range(2):
        train_step(module, opt, sched, batch, step_config(cfg), answers_for(selector, batch, texts))
    after = dict(selector.named_parameters())
    assert any(not torch.equal(lora_before[n], after[n]) for n in lora_before)
    assert margin(answers) > before + 0.3, (before, margin(answers))


def test_stage_grpo_needs_an_sft_selector_on_an_lm_on_disk(tmp_path):
    from moon_ray.creative.sft import build_selector
    from moon_ray.creative.trainer import grpo_config

    with pytest.raises(ConfigError, match="creative.train.init_from"):
        load_config(None, ["creative.train.stage=grpo"])
    with pytest.raises(ConfigError, match="read by stage grpo only"):
        load_config(None, [f"creative.train.init_from={tmp_path}"])
    grpo = ["creative.train.stage=grpo", f"creative.train.init_from={tmp_path / 'sft'}",
            f"creative.train.output_dir={tmp_path / 'grpo'}"]
    with pytest.raises(ConfigError, match="is not a creative selector"):
        grpo_config(load_config(None, grpo))
    cfg = load_config(None, TINY)
    build_selector(cfg).save(tmp_path / "sft", {"stage": "sft", "seed": 0})
    with pytest.raises(ConfigError, match="model.lm.tiny"):
        grpo_config(load_config(None, grpo))
    with pytest.raises(ConfigError, match="is the SFT selector"):
        grpo_config(load_config(None, [*grpo, f"creative.train.output_dir={tmp_path / 'sft'}"]))
    meta = json.loads((tmp_path / "sft" / "creative.json").read_text())
    meta["model"]["lm"] |= {"tiny": False, "path": str(tmp_path / "lm")}
    (tmp_path / "sft" / "creative.json").write_text(json.dumps(meta))
    taken = grpo_config(load_config(None, [*grpo, "model.lm.lora.r=8"]))  # the selector's model wins
    assert taken.model.lm.path == str(tmp_path / "lm") and taken.model.lm.lora.r == 4


def test_uniform_groups_leave_the_update_but_not_the_log():
    assert informative_groups(torch.tensor([[1.1, 1.1], [1.1, 0.1], [0.1, 0.1], [-0.1, 0.1]]), 1) == [1, 3]
    assert informative_groups(torch.tensor([[1.1, 1.1], [0.1, 0.1], [1.1, 1.1]]), 2) == [0, 1]  # topped up in order
    groups = [[rollout(RIGHT), rollout(RIGHT)], [rollout(RIGHT), rollout(WRONG)], [rollout(WRONG), rollout(WRONG)]]
    kept = select_groups(AnswerGroups(groups, ["A", "A", "A"], trainer_version=3), 0.1, 1)
    assert kept.rows == [1] and kept.groups == [groups[1]] and kept.labels == ["A"] and kept.trainer_version == 3
    assert kept.sampled["accuracy"] == pytest.approx(3 / 6) and kept.sampled["update_groups"] == pytest.approx(1 / 3)


def test_a_kept_group_is_scored_against_its_own_batch_row():
    from moon_ray.creative.sft import build_selector
    from moon_ray.creative.trainer import step_config
    from moon_ray.train.worker import train_step

    cfg = load_config(None, [*TINY, "rollout.group_size=2", "rollout.grpo_minibatches=1", "rollout.kl_coef=0"])
    selector = build_selector(cfg).train()
    shots = [jpeg(product_shot(64)), jpeg(product_shot(48)), jpeg(product_shot(32))]
    batch = {"image_a": shots, "image_b": shots[::-1], "interest": ["casual", "", "formal"], "label": ["A", "A", "A"]}
    full = answers_for(selector, batch, [[RIGHT, RIGHT], [WRONG, WRONG], [RIGHT, WRONG]])
    kept = select_groups(full, 0.1, 1)
    assert kept.rows == [2]
    with torch.no_grad():
        alone, _, _, _ = answer_logprobs(selector, batch, range(1), kept.groups[0], 2, kept.rows)
        direct, _, _, _ = answer_logprobs(selector, batch, range(2, 3), full.groups[2], 2)
    assert torch.allclose(alone, direct)
    params = [p for p in selector.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.01)
    metrics = train_step(CreativeGRPOModule(selector, cfg), opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                         batch, step_config(cfg), kept)
    assert metrics["accuracy"] == pytest.approx(3 / 6) and metrics["update_groups"] == pytest.approx(1 / 3)
