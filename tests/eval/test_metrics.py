"""Metrics against hand-derived values: rankings with ties, queries with no relevant item, k > pool."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moon_ray.eval import metrics as M

L3 = 1 / math.log2(3)  # discount at rank 2
L4 = 1 / math.log2(4)  # discount at rank 3


def test_ndcg_hand_computed():
    ranked = np.array([[3, 1, 4, 0], [0, 1, 2, 3]])
    relevant = [{1, 0}, {0}]
    # query 0: relevant at ranks 2 and 4; k=3 sees rank 2 only. ideal: ranks 1, 2.
    expected = [L3 / (1 + L3), 1.0]
    np.testing.assert_allclose(M.ndcg_at_k(ranked, relevant, 3), expected)
    # k=4 sees both: (1/log2(3) + 1/log2(5)) / (1 + 1/log2(3))
    np.testing.assert_allclose(M.ndcg_at_k(ranked, relevant, 4)[0], (L3 + 1 / math.log2(5)) / (1 + L3))


def test_ndcg_ideal_is_capped_by_k():
    # 5 relevant, k=2, both retrieved: perfect, even though 3 relevant products are not in the top 2.
    assert M.ndcg_at_k(np.array([[0, 1, 9]]), [{0, 1, 2, 3, 4}], 2)[0] == pytest.approx(1.0)


def test_k_larger_than_pool_and_padding():
    # a pool of 2 products, asked for k=10: relevant at rank 2 -> 1/log2(3); ideal has 1 relevant -> 1.
    assert M.ndcg_at_k(np.array([[5, 7]]), [{7}], 10)[0] == pytest.approx(L3)
    padded = np.array([[5, 7, -1, -1]])
    assert M.ndcg_at_k(padded, [{7}], 10)[0] == pytest.approx(L3)
    assert M.hit_at_k(padded, [{7}], 10)[0] == 1.0
    assert M.recall_at_k(padded, [{7, 8}], 10)[0] == 0.5


def test_no_relevant_item_is_undefined_and_left_out_of_the_mean():
    ranked = np.array([[0, 1], [1, 0], [0, 1]])
    relevant = [{0}, set(), {1}]
    values = M.ndcg_at_k(ranked, relevant, 2)
    assert values[0] == 1.0 and math.isnan(values[1]) and values[2] == pytest.approx(L3)
    assert M.mean_defined(values) == pytest.approx((1 + L3) / 2)
    assert math.isnan(M.hit_at_k(ranked, relevant, 1)[1])
    assert math.isnan(M.mean_defined(np.array([np.nan])))


def test_hit_and_recall():
    ranked = np.array([[5, 6, 7], [1, 2, 3]])
    relevant = [{7}, {9}]
    assert M.hit_at_k(ranked, relevant, 1).tolist() == [0.0, 0.0]
    assert M.hit_at_k(ranked, relevant, 3).tolist() == [1.0, 0.0]
    r = np.array([[1, 2, 3]])
    assert M.recall_at_k(r, [{1, 3, 9}], 2)[0] == pytest.approx(1 / 3)
    assert M.recall_at_k(r, [{1, 3, 9}], 3)[0] == pytest.approx(2 / 3)
    assert M.recall_curve(r, [{1, 3, 9}], [1, 2, 3]) == pytest.approx([1 / 3, 1 / 3, 2 / 3])


def test_ties_go_to_the_lower_index():
    scores = np.array([[0.5, 0.9, 0.5, 0.9], [0.0, 0.0, 0.0, 1.0]])
    assert M.top_k(scores, 4).tolist() == [[1, 3, 0, 2], [3, 0, 1, 2]]
    assert M.top_k(scores, 9).shape == (2, 4)  # k larger than the pool
    # FAISS hits re-sorted: equal scores by id, padding (-1) last.
    ids = np.array([[7, 2, 5], [-1, 4, 3]])
    hit_scores = np.array([[0.9, 0.9, 0.5], [-3e38, 0.2, 0.2]])
    assert M.sort_hits(hit_scores, ids).tolist() == [[2, 7, 5], [3, 4, -1]]


def test_exclude_the_query_itself():
    ranked = np.array([[0, 5, 6], [7, 8, 9], [4, 2, -1]])
    assert M.exclude(ranked, [0, 1, 2], 2).tolist() == [[5, 6], [7, 8], [4, -1]]


def test_zero_shot_accuracy_is_tie_aware():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.5, 0.5, 0.1]])
    labels = np.array([0, 0, 1])
    # right, wrong, tied between 2 labels (the true one among them) -> 1/2
    assert M.zero_shot_accuracy(scores, labels) == pytest.approx((1 + 0 + 0.5) / 3)
    assert M.tie_fraction(scores) == pytest.approx(1 / 3)
    flat = np.zeros((4, 5))  # every label scored the same: chance, whatever the labels
    assert M.zero_shot_accuracy(flat, np.array([0, 0, 0, 3])) == pytest.approx(1 / 5)
    assert M.tie_fraction(flat) == 1.0


def test_toy_classification_by_nearest_label():
    labels = np.eye(3, dtype=np.float32)  # 3 label prompts, orthogonal
    items = np.array([[0.9, 0.1, 0], [0.1, 0.2, 0.97], [0.6, 0.7, 0.1], [0, 0.1, 0.99]], dtype=np.float32)
    truth = np.array([0, 2, 0, 2])  # the third item is closer to label 1: wrong
    assert M.zero_shot_accuracy(items @ labels.T, truth) == pytest.approx(0.75)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="Q = 2"):
        M.ndcg_at_k(np.array([[0, 1]]), [{0}, {1}], 1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        M.hit_at_k(np.array([[0]]), [{0}], 0)
    with pytest.raises(ValueError, match="N = 3"):
        M.zero_shot_accuracy(np.zeros((2, 2)), np.zeros(3, int))


def test_kagl_metrics_on_a_toy_ranking():
    """Marqo's definitions (trec_eval P and R via BEIR, their MRR over the top 10), derived by hand."""
    ranked = np.array([[4, 7, 1, 9, 0, 2, 3, 5, 6, 8],    # relevant 7 (rank 2) and 9 (rank 4); 11 missed
                       [2, 0, 1, 3, 4, 5, 6, 7, 8, 9],    # relevant 2 at rank 1
                       [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]])   # relevant 11 not retrieved
    relevant = [{7, 9, 11}, {2}, {11}]
    assert M.precision_at_k(ranked, relevant, 1).tolist() == [0.0, 1.0, 0.0]
    np.testing.assert_allclose(M.precision_at_k(ranked, relevant, 10), [0.2, 0.1, 0.0])
    np.testing.assert_allclose(M.mrr_at_k(ranked, relevant, 10), [0.5, 1.0, 0.0])
    np.testing.assert_allclose(M.recall_at_k(ranked, relevant, 1), [0.0, 1.0, 0.0])
    np.testing.assert_allclose(M.recall_at_k(ranked, relevant, 10), [2 / 3, 1.0, 0.0])
    assert M.mean_defined(M.precision_at_k(ranked, relevant, 1)) == pytest.approx(1 / 3)
    assert M.mean_defined(M.precision_at_k(ranked, relevant, 10)) == pytest.approx(0.1)
    assert M.mean_defined(M.mrr_at_k(ranked, relevant, 10)) == pytest.approx(0.5)
    assert M.mean_defined(M.recall_at_k(ranked, relevant, 10)) == pytest.approx(5 / 9)
    # MRR only sees the top k: relevant at rank 4 counts 1/4 with k=10, 0 with k=3
    assert M.mrr_at_k(ranked[:1], [{9}], 10)[0] == pytest.approx(0.25)
    assert M.mrr_at_k(ranked[:1], [{9}], 3)[0] == 0.0


def test_precision_divides_by_k_even_when_the_pool_is_smaller():
    # trec_eval P@10 on a pool of 3 (padded with -1): 2 relevant retrieved -> 2/10, not 2/3
    padded = np.array([[1, 0, 2, -1, -1, -1, -1, -1, -1, -1]])
    assert M.precision_at_k(padded, [{0, 1}], 10)[0] == pytest.approx(0.2)
    assert math.isnan(M.precision_at_k(padded, [set()], 10)[0])
    assert math.isnan(M.mrr_at_k(padded, [set()], 10)[0])


def test_bootstrap_ci():
    assert M.bootstrap_ci(np.full(50, 0.4), n=200, seed=1) == pytest.approx((0.4, 0.4))
    values = np.array([0.0, 1.0] * 200 + [np.nan])  # NaN (undefined query) left out
    lo, hi = M.bootstrap_ci(values, n=1000, seed=3)
    # mean 0.5, standard error 0.5 / sqrt(400) = 0.025: the 95 % interval is about 0.5 ± 0.049
    assert lo == pytest.approx(0.451, abs=0.01) and hi == pytest.approx(0.549, abs=0.01)
    assert M.bootstrap_ci(values, n=1000, seed=3) == (lo, hi)  # seeded: reproducible
    assert M.bootstrap_ci(values, n=1000, seed=4) != (lo, hi)
    assert all(math.isnan(x) for x in M.bootstrap_ci(np.array([np.nan]), n=10))
    # chunked resampling (many queries) gives an interval of the right width too
    big = np.tile([0.0, 1.0], 50_000)
    lo, hi = M.bootstrap_ci(big, n=100, seed=0)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(2 * 1.96 * 0.5 / math.sqrt(big.size), rel=0.3)


def test_zero_shot_correct_per_item():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.5, 0.5, 0.1]])
    np.testing.assert_allclose(M.zero_shot_correct(scores, np.array([0, 0, 1])), [1.0, 0.0, 0.5])
    assert M.zero_shot_correct(np.zeros((0, 3)), np.zeros(0, int)).shape == (0,)


def test_compare_marks_overlapping_intervals():
    from moon_ray.eval.report import markdown_table, overlap

    key = "text/nDCG@10"
    base = {"name": "a", "metrics": {key: 0.50}, "ci95": {key: [0.45, 0.55]}, "counts": {}}
    close = {"name": "b", "metrics": {key: 0.53}, "ci95": {key: [0.50, 0.58]}, "counts": {}}
    above = {"name": "c", "metrics": {key: 0.70}, "ci95": {key: [0.60, 0.80]}, "counts": {}}
    below = {"name": "d", "metrics": {key: 0.30}, "ci95": {key: [0.20, 0.44]}, "counts": {}}
    bare = {"name": "e", "metrics": {key: 0.90}, "counts": {}}
    assert overlap(base, close, key) is True and overlap(base, above, key) is False
    assert overlap(base, bare, key) is None
    row = next(line for line in markdown_table([base, close, above, below, bare], mark_overlap=True).splitlines()
               if line.startswith("| text"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert cells == ["0.500 [0.450, 0.550]", "0.530 [0.500, 0.580] ≈", "0.700 [0.600, 0.800] ▲",
                     "0.300 [0.200, 0.440] ▼", "0.900"]
