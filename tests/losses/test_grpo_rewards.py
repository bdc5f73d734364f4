"""GRPO pieces and rewards against hand-derived values."""

import math

import pytest
import torch

from moon_ray.losses.grpo import group_advantages, grpo_loss, kl_k3, token_logprobs
from moon_ray.rewards import contrastive_reward, format_reward


def test_group_advantages():
    adv = group_advantages(torch.tensor([[1.0, 3.0], [2.0, 2.0]]))
    assert adv[0].tolist() == pytest.approx([-1.0, 1.0], abs=1e-5)  # mean 2, std 1
    assert adv[1].tolist() == [0.0, 0.0]


def test_kl_k3_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    r = math.log(0.25) - math.log(0.5)
    assert kl_k3(logp, ref).item() == pytest.approx(math.exp(r) - r - 1)
    assert kl_k3(ref, ref).item() == 0.0


def test_grpo_loss_clipping_and_mask():
    old = torch.zeros(2, 3)
    logp = torch.tensor([[math.log(1.5), 0.0, 9.0], [math.log(0.5), 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([1.0, -1.0])
    loss, m = grpo_loss(logp, old, logp.detach(), adv, mask, clip_eps=0.2, kl_coef=0.0)
    # trace 0: tokens ratio 1.5 (clipped to 1.2 for A>0 -> -1.2) and 1.0 (-1.0); third masked -> mean -1.1
    # trace 1: ratio 0.5 with A<0: -min(-0.5, -0.8) = 0.8; ratios 1, 1 -> 1, 1 -> mean (0.8+1+1)/3
    expected = (-1.1 + (0.8 + 1 + 1) / 3) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert m["grpo_clip_frac"] == pytest.approx(2 / 5)
    weighted, _ = grpo_loss(logp, old, logp.detach(), adv, mask, 0.2, 0.0, weights=torch.tensor([1.0, 0.0]))
    assert weighted.item() == pytest.approx(-1.1 / 2, rel=1e-5)


def test_grpo_kl_term_added():
    logp = torch.zeros(1, 2)
    ref = torch.full((1, 2), math.log(0.5))
    loss, m = grpo_loss(logp, logp, ref, torch.zeros(1), torch.ones(1, 2), kl_coef=0.5)
    r = math.log(0.5)
    assert loss.item() == pytest.approx(0.5 * (math.exp(r) - r - 1), rel=1e-5)
    assert m["grpo_kl"] == pytest.approx(math.exp(r) - r - 1, rel=1e-5)


def test_token_logprobs():
    logits = torch.log(torch.tensor([[[0.1, 0.9], [0.6, 0.4]]]))
    assert token_logprobs(logits, torch.tensor([[1, 0]])).exp().tolist()[0] == pytest.approx([0.9, 0.6])


def test_contrastive_reward_by_hand():
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    traces = torch.stack([e0, e1]).unsqueeze(0)  # one product, trace 0 = e0, trace 1 = e1
    queries = e0.view(1, 1, 2)  # its single query is e0
    negatives = e1.view(1, 2)
    r = contrastive_reward(traces, queries, negatives, temperature=1.0)
    good = math.log(math.e / (math.e + 1))  # positive sim 1, negative sim 0
    bad = math.log(1 / (1 + 1))  # positive sim 0, negative sim 0
    assert r[0].tolist() == pytest.approx([good, bad], rel=1e-6)
    assert r[0, 0] > r[0, 1]


def test_format_reward():
    assert format_reward("white mesh running shoe, brand Nike, men", "Nike Men Shoe") == 0.1
    assert format_reward("ok", "t") == -0.1
    assert format_reward("Nike Men Shoe. Nike Men Shoe.", "Nike Men Shoe") == -0.1
    assert format_reward("shoe shoe shoe shoe shoe shoe", "x") == -0.1


def test_contrastive_reward_exclude_mask():
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    traces = e0.view(1, 1, 2)
    queries = e0.view(1, 1, 2)
    negatives = torch.stack([e0, e1])  # the first is the product itself, to be excluded
    r = contrastive_reward(traces, queries, negatives, 1.0, exclude=torch.tensor([[True, False]]))
    assert r.item() == pytest.approx(math.log(math.e / (math.e + 1)), rel=1e-6)


def test_staleness_weights():
    from moon_ray.losses.grpo import staleness_weights

    lag = torch.tensor([0, 1, 3])
    old = torch.tensor([[0.0, 0.0], [math.log(2.0), 0.0], [0.0, 0.0]])
    roll = torch.zeros(3, 2)
    mask = torch.tensor([[1, 1], [1, 0], [1, 1]])
    keep, w = staleness_weights(lag, 1, old, roll, mask)
    assert keep.tolist() == [True, True, False]
    assert w.tolist() == pytest.approx([1.0, 2.0, 0.0])  # lag 1: exp(mean(log 2)) = 2 (mask drops token 2)
    keep, w = staleness_weights(lag, 1, old, roll, mask, cap=1.5)
    assert w[1].item() == pytest.approx(1.5)
    keep, w = staleness_weights(lag, 1, old, roll, mask, policy="drop")
    assert keep.tolist() == [True, False, False] and w.tolist() == [1.0, 0.0, 0.0]
