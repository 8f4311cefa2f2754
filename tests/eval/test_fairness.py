"""Closed-form checks of the numpy fairness core (fairjax/eval/fairness.py)."""
import numpy as np
import pytest

from fairjax.eval import fairness as F
from fairjax.eval import stats as S


def test_top_k_exact_ties_by_lower_index():
    sim = np.array([[0.5, 0.9, 0.5, 0.5, 0.1, 0.5],
                    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
                    [0.0, -np.inf, 0.3, 0.3, -np.inf, 0.2]])
    top = F.top_k_indices(sim, 3)
    np.testing.assert_array_equal(top, [[1, 0, 2], [0, 1, 2], [2, 3, 5]])
    # k >= M: everything, ordered; -inf last
    np.testing.assert_array_equal(F.top_k_indices(sim[2:], 10), [[2, 3, 5, 0, 1, 4]])


def test_top_k_matches_stable_sort_on_random_ties():
    rng = np.random.default_rng(0)
    sim = rng.integers(0, 4, size=(50, 40)).astype(np.float32)  # many ties
    want = np.argsort(-sim, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(F.top_k_indices(sim, 7), want)


def test_top_k_rejects_nan_and_bad_shape():
    with pytest.raises(ValueError, match="NaN"):
        F.top_k_indices(np.array([[0.1, np.nan]]), 1)
    with pytest.raises(ValueError, match="n_texts, n_candidates"):
        F.top_k_indices(np.zeros(3), 1)


def test_impact_ratios_closed_form():
    # pool_k=6 over 8 candidates; ranking by similarity = index order 0..7 (descending values).
    sim = np.linspace(1.0, 0.3, 8)[None, :]
    groups = ["F", "M", "M", "F", "M", "M", "F", "F"]
    out = F.impact_ratios(sim, groups, pool_k=6, select_k=3)
    # pool = 0..5: F {0,3}, M {1,2,4,5}; selected = 0..2: F {0}, M {1,2}
    assert out["sr_F"][0] == pytest.approx(1 / 2)
    assert out["sr_M"][0] == pytest.approx(2 / 4)
    assert out["ir_F"][0] == pytest.approx(1.0) and out["ir_M"][0] == pytest.approx(1.0)
    sim2 = np.array([[0.9, 0.8, 0.7, 0.1, 0.6, 0.5, 0.0, 0.0]])
    out = F.impact_ratios(sim2, groups, pool_k=6, select_k=2)
    # pool = {0,1,2,4,5,3}: F {0,3}, M {1,2,4,5}; selected {0,1}: F 1/2, M 1/4
    assert out["sr_F"][0] == pytest.approx(0.5) and out["sr_M"][0] == pytest.approx(0.25)
    assert out["ir_M"][0] == pytest.approx(0.5) and out["ir_F"][0] == pytest.approx(1.0)
    assert list(out) == ["sr_F", "sr_M", "ir_F", "ir_M"]


def test_impact_ratio_ties_decided_by_index():
    sim = np.zeros((1, 6))  # all tied: pool = first 4, selected = first 2 by index
    out = F.impact_ratios(sim, ["a", "a", "b", "b", "b", "b"], pool_k=4, select_k=2)
    assert out["sr_a"][0] == 1.0 and out["sr_b"][0] == 0.0
    assert out["ir_b"][0] == 0.0 and F.violates_four_fifths(out["ir_b"])[0]


def test_absent_group_is_nan_not_zero():
    sim = np.array([[0.9, 0.8, 0.1], [0.1, 0.2, 0.9]])
    out = F.impact_ratios(sim, ["x", "x", "y"], pool_k=2, select_k=1,
                          group_names=["x", "y", "z"])
    assert np.isnan(out["sr_y"][0]) and np.isnan(out["ir_y"][0])  # y not in row 0's pool
    assert np.isnan(out["sr_z"]).all()
    assert out["ir_y"][1] == 1.0 and out["ir_x"][1] == 0.0
    np.testing.assert_array_equal(F.violates_four_fifths(out["ir_y"]), [False, False])
    np.testing.assert_array_equal(F.violates_four_fifths(out["ir_x"]), [False, True])


def test_excluded_candidates_and_empty_pool():
    sim = np.array([[-np.inf, 0.5, -np.inf, 0.4], [-np.inf] * 4])
    out = F.impact_ratios(sim, ["a", "b", "a", "a"], pool_k=3, select_k=1)
    # row 0: pool = {1 (b), 3 (a)}; selected = {1}
    assert out["sr_b"][0] == 1.0 and out["sr_a"][0] == 0.0
    assert all(np.isnan(v[1]) for v in out.values())  # nothing eligible -> all NaN


def test_unlabelled_candidates_not_counted():
    sim = np.array([[0.9, 0.8, 0.7, 0.6]])
    out = F.impact_ratios(sim, [None, "a", "", "b"], pool_k=4, select_k=2)
    assert out["sr_a"][0] == 1.0 and out["sr_b"][0] == 0.0


def test_impact_ratio_bad_inputs():
    with pytest.raises(ValueError, match="n_candidates=3"):
        F.impact_ratios(np.zeros((2, 4)), ["a", "b", "c"])
    with pytest.raises(ValueError, match="select_k"):
        F.impact_ratios(np.zeros((1, 3)), ["a", "b", "c"], pool_k=2, select_k=3)
    with pytest.raises(ValueError, match="'c' at candidate 2"):
        F.impact_ratios(np.zeros((1, 3)), ["a", "b", "c"], group_names=["a", "b"])


def test_four_fifths_flags():
    rates = {"sr_a": np.array([1.0, 1.0]), "ir_a": np.array([1.0, 0.79]),
             "ir_b": np.array([0.8, np.nan])}
    flags = F.four_fifths_flags(rates)
    np.testing.assert_array_equal(flags["violates_a"], [False, True])
    np.testing.assert_array_equal(flags["violates_b"], [False, False])
    np.testing.assert_array_equal(flags["violates_any"], [False, True])


# Hand-computed table for scipy.stats.wasserstein_distance(u, v) on equal-length value samples:
# mean |sort(u) - sort(v)|. The first two rows are the values quoted in reference §4.4.
PAPER_TABLE = [
    ([0.5, 0.5], [0.3, 0.7], 0.2),
    ([0.3, 0.7], [0.7, 0.3], 0.0),
    ([0.5, 0.5], [1.0, 0.0], 0.5),
    ([0.2, 0.3, 0.5], [0.6, 0.4, 0.0], (0.2 + 0.1 + 0.1) / 3),
    ([0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1], (0.15 + 0.15 + 0.15 + 0.45) / 4),
]


@pytest.mark.parametrize("p,q,want", PAPER_TABLE)
def test_paper_wasserstein_table(p, q, want):
    assert F.paper_wasserstein(p, q) == pytest.approx(want)
    assert F.paper_wasserstein(q, p) == pytest.approx(want)


def test_paper_two_groups_is_minority_share_difference_and_label_blind():
    a = np.linspace(0, 1, 11)
    for x in a:
        for y in a:
            p, q = np.array([x, 1 - x]), np.array([y, 1 - y])
            assert F.paper_wasserstein(p, q) == pytest.approx(abs(min(x, 1 - x) - min(y, 1 - y)))
    assert F.paper_wasserstein([0.7, 0.3], [0.5, 0.5]) == F.paper_wasserstein([0.3, 0.7], [0.5, 0.5])


def test_signed_tv_is_label_aware():
    assert F.signed_tv([0.3, 0.7], [0.7, 0.3]) == pytest.approx(0.4)
    assert F.signed_tv([0.5, 0.5], [0.3, 0.7]) == pytest.approx(0.2)
    assert F.signed_tv([0.2, 0.3, 0.5], [0.6, 0.4, 0.0]) == pytest.approx(0.5)
    target = np.array([0.6, 0.4])
    assert F.signed_tv([0.7, 0.3], target) != pytest.approx(F.signed_tv([0.3, 0.7], target))
    with pytest.raises(ValueError, match="distance mode"):
        F.share_distance([1.0], [1.0], "kl")


def test_member_counts_and_shares():
    top = np.array([[0, 1, 2], [3, 3, 1]])
    codes = np.array([0, 1, -1, 1])
    valid = np.array([[True, True, True], [True, False, True]])
    counts = F.member_counts(top, codes, 2, valid)
    np.testing.assert_array_equal(counts, [[1, 1], [0, 2]])
    shares = F.group_shares(np.array([[1, 3], [0, 0]]))
    np.testing.assert_allclose(shares[0], [0.25, 0.75])
    assert np.isnan(shares[1]).all()


def test_corpus_summaries_come_from_stats():
    """fairness.py keeps per-text metrics only; corpus CIs / paired comparisons live in eval.stats
    (one implementation), which is what score/report use."""
    for dup in ("bootstrap_ci", "summarize", "summarize_all", "paired_comparison"):
        assert not hasattr(F, dup), dup
    x = np.array([1.0, 2.0, 3.0, np.nan])
    s = S.summarize_columns({"r": x}, n_boot=200)["r"]
    assert s["n"] == 3 and s["n_nan"] == 1 and s["mean"] == pytest.approx(2.0)
    assert s["std"] == pytest.approx(np.std([1, 2, 3], ddof=1))
    assert 1.0 <= s["ci_low"] <= 2.0 <= s["ci_high"] <= 3.0
    pc = S.paired_comparison([1.0, 2.0, 3.0, np.nan], [2.0, 2.0, 5.0, 1.0], n_boot=200)
    assert pc["n"] == 3 and pc["mean_diff"] == pytest.approx(1.0)
    assert pc["win_rate"] == pytest.approx(2 / 3) and pc["tie_rate"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="equal lengths"):
        S.paired_comparison([1.0], [1.0, 2.0])
    assert np.isnan(S.summarize_columns({"r": np.array([np.nan])})["r"]["mean"])
