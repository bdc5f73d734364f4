"""InfoNCE variants against values derived by hand."""

import math

import pytest
import torch

from moon_ray.losses.contrastive import (
    gather_with_grad,
    identity_positives,
    info_nce,
    key_positives,
    matryoshka_info_nce,
    symmetric_info_nce,
)

# two queries, three candidates, unit vectors in 2-D chosen so the similarities are simple
Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
C = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # sims: q0 -> [1, 0, -1]; q1 -> [0, 1, 0]


def test_plain_infonce_by_hand():
    pos = identity_positives(2, 3)
    # q0: -log(e^1 / (e^1 + e^0 + e^-1)); q1: -log(e^1 / (e^0 + e^1 + e^0))
    l0 = -math.log(math.e / (math.e + 1 + math.exp(-1)))
    l1 = -math.log(math.e / (1 + math.e + 1))
    assert info_nce(Q, C, pos, temperature=1.0).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_temperature_scales_logits():
    pos = identity_positives(2, 3)
    l0 = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2)))
    l1 = -math.log(math.exp(2) / (1 + math.exp(2) + 1))
    assert info_nce(Q, C, pos, temperature=0.5).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_multi_positive():
    pos = torch.tensor([[True, False, True], [False, True, False]])
    l0 = -math.log((math.e + math.exp(-1)) / (math.e + 1 + math.exp(-1)))
    l1 = -math.log(math.e / (2 + math.e))
    assert info_nce(Q, C, pos, temperature=1.0).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_hard_negatives_weighted():
    pos = identity_positives(2, 3)
    hard = torch.tensor([[False, True, False], [True, True, True]])  # q1's own positive is ignored as hard
    beta = 3.0
    l0 = -math.log(math.e / (math.e + beta * 1 + math.exp(-1)))
    l1 = -math.log(math.e / (beta * 1 + math.e + beta * 1))
    got = info_nce(Q, C, pos, temperature=1.0, hard_negatives=hard, hard_weight=beta).item()
    assert got == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_errors_and_helpers():
    with pytest.raises(ValueError, match="at least one positive"):
        info_nce(Q, C, torch.zeros(2, 3, dtype=torch.bool), 1.0)
    with pytest.raises(ValueError, match="positives"):
        info_nce(Q, C, torch.zeros(3, 3, dtype=torch.bool), 1.0)
    assert identity_positives(2, 6, offset=2).nonzero().tolist() == [[0, 2], [1, 3]]
    assert key_positives(torch.tensor([1, 2]), torch.tensor([2, 1, 1])).tolist() == [[False, True, True], [True, False, False]]
    x = torch.randn(3, 4)
    assert gather_with_grad(x) is x  # single process: identity


def test_symmetric_and_matryoshka():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    one_way = -math.log(math.e / (math.e + 1))
    assert symmetric_info_nce(a, a, 1.0).item() == pytest.approx(one_way, rel=1e-6)
    # prefix 1 of C: [1], [0]->normalised to 0 (eps), [-1]; the full-dim loss is the plain one
    raw_q, raw_c = torch.tensor([[2.0, 0.0], [0.0, 3.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0], [-5.0, 0.0]])
    pos = identity_positives(2, 3)
    full = info_nce(Q, C, pos, 1.0)
    assert matryoshka_info_nce(raw_q, raw_c, (2,), positives=pos, temperature=1.0).item() == pytest.approx(full.item(), rel=1e-6)
    both = matryoshka_info_nce(raw_q, raw_c, (1, 2), positives=pos, temperature=1.0)
    assert both.item() != pytest.approx(full.item())
