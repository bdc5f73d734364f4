"""Format penalty, per-query exclusion and query masks of the contrastive reward, within-group std."""

import math

import pytest
import torch

from moon_ray.rewards import broken_reason, contrastive_reward, format_penalty, within_group_std


def test_format_penalty_is_zero_for_good_traces_and_negative_for_broken_ones():
    title = "Puma Men Beach Green Black Flip Flops"
    assert format_penalty("green flip flops for men, summer season, casual use", title) == 0.0
    assert format_penalty("Shirts, navy blue colour, for men, fall season", "Turtle Check Men Navy Blue Shirt") == 0.0
    assert broken_reason("ok", title) == "length"
    assert broken_reason(f"{title}\n\n{title}", title) == "title_repeated"
    assert broken_reason("Puma Men Beach Green Flip Flops", title) == "title_copy"
    assert broken_reason("a product that is a product that is a product that is", "x y") == "repetition"
    assert format_penalty("ok", title, weight=0.3) == -0.3


def test_contrastive_reward_per_query_exclude_and_query_mask():
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    traces = e0.view(1, 1, 2)
    queries = torch.stack([e0, e1]).unsqueeze(0)  # two queries: e0, e1
    negatives = torch.stack([e0, e1])
    # query 0 excludes negative 0, query 1 excludes negative 1
    exclude = torch.tensor([[[True, False], [False, True]]])
    r = contrastive_reward(traces, queries, negatives, 1.0, exclude=exclude)
    q0 = math.log(math.e / (math.e + 1))  # pos 1 vs neg e1 (0)
    q1 = math.log(1 / (1 + 1))  # pos e0·e1 = 0 vs neg e0·e1 = 0
    assert r.item() == pytest.approx((q0 + q1) / 2, rel=1e-6)
    only_first = contrastive_reward(traces, queries, negatives, 1.0, exclude=exclude,
                                    query_mask=torch.tensor([[True, False]]))
    assert only_first.item() == pytest.approx(q0, rel=1e-6)


def test_within_group_std():
    values = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    assert within_group_std(values) == pytest.approx(0.5)  # std 1 and 0
