"""Corpus selection tables (fairlearn MetricFrame shape) and the preservation metrics."""
import numpy as np
import pytest

from fairjax.eval import preservation as P
from fairjax.eval.fairness import FOUR_FIFTHS_NOTE, selection_table


def _counts(seed=0, n=40, groups=3):
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 12, size=(n, groups))
    pool[0, 2] = 0  # a posting with no candidate of group 2
    sel = np.minimum(pool, rng.integers(0, 5, size=(n, groups)))
    return sel, pool


def _decisions(sel, pool, names):
    """One row per matched candidate slot: selected 0/1 and its group (what MetricFrame sees)."""
    y, g = [], []
    for srow, prow in zip(sel, pool):
        for j, name in enumerate(names):
            y += [1] * int(srow[j]) + [0] * int(prow[j] - srow[j])
            g += [name] * int(prow[j])
    return np.array(y), np.array(g)


@pytest.mark.parametrize("seed", [0, 1])
def test_selection_table_matches_fairlearn_metricframe(seed):
    import fairlearn  # test-only dependency (pyproject `test` extra, requirements.txt)
    from fairlearn.metrics import MetricFrame, demographic_parity_ratio, selection_rate

    names = ["female", "male", "nonbinary"]
    sel, pool = _counts(seed)
    t = selection_table(sel, pool, names, n_boot=200, seed=seed)
    y, g = _decisions(sel, pool, names)
    mf = MetricFrame(metrics=selection_rate, y_true=y, y_pred=y, sensitive_features=g)
    for name in names:
        assert t["by_group"][name]["value"] == pytest.approx(mf.by_group[name])
        assert t["by_group"][name]["ci_low"] <= t["by_group"][name]["value"] <= t["by_group"][name]["ci_high"]
    assert t["overall"]["value"] == pytest.approx(mf.overall)
    assert t["difference"]["value"] == pytest.approx(mf.difference())
    assert t["ratio"]["value"] == pytest.approx(mf.ratio())
    assert t["ratio"]["value"] == pytest.approx(
        demographic_parity_ratio(y, y, sensitive_features=g))
    assert t["four_fifths_violation"] == (mf.ratio() < 0.8)
    assert fairlearn.__version__ and "US employment-law heuristic" in FOUR_FIFTHS_NOTE


def test_selection_table_edge_cases():
    t = selection_table(np.array([[0, 3]]), np.array([[0, 6]]), ["female", "male"], n_boot=50)
    assert np.isnan(t["by_group"]["female"]["value"]) and t["by_group"]["male"]["value"] == 0.5
    assert t["ratio"]["value"] == 1.0  # one group present: nothing to compare against
    with pytest.raises(ValueError, match=r"shape \[N, 2\]"):
        selection_table(np.zeros((2, 3)), np.zeros((2, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="lie in"):
        selection_table(np.array([[3, 0]]), np.array([[2, 1]]), ["a", "b"])


def test_preservation_rows():
    orig = "Acme Corp | Berlin | Senior Python Engineer | REMOTE\nWe use Python, Postgres and Kubernetes."
    keep = "Acme Corp (Berlin, remote) hires a Senior Python Engineer. Stack: Python, Postgres, Kubernetes."
    salad = "A great team. Apply now."
    vec = np.array([[1.0, 0.0], [0.0, 2.0]])
    rows = P.preservation_rows([orig, orig], [keep, salad], vec, np.array([[2.0, 0.0], [1.0, 0.0]]))
    np.testing.assert_allclose(rows["cosine"], [1.0, 0.0])
    assert rows["skills_kept"][0] == 1.0 and rows["skills_kept"][1] == 0.0
    assert rows["header_kept"][0] == 1.0 and rows["header_kept"][1] == 0.0
    assert rows["chrf"][0] > 40 > rows["chrf"][1]
    np.testing.assert_allclose(rows["length_ratio"], [len(keep) / len(orig), len(salad) / len(orig)])
    assert np.isnan(P.skills_kept("We bake bread.", "bread"))
    assert np.isnan(P.header_kept("we bake bread", "bread"))
    # a metadata field given by the record wins over the heuristics
    assert P.header_kept("text", "Join Initech today", {"company": "Initech"}) == 1.0
    onsite = "Initech | Austin, TX | Backend Engineer | ONSITE\nGo."
    assert P.header_kept(onsite, "Initech in Austin, TX seeks a Backend Engineer, on-site.") == 1.0
    assert P.header_kept(onsite, "Initech in Austin, TX seeks a Backend Engineer, remote ok.") == 0.75
    with pytest.raises(ValueError, match="2 originals for 1 rewrites"):
        P.preservation_rows(["a", "b"], ["a"])


def test_length_controlled_difference_removes_a_pure_length_effect():
    rng = np.random.default_rng(0)
    n = 300
    len_a = rng.uniform(200, 400, n)
    len_b = len_a * 3  # system b writes three times longer
    y_a = 2.0 * np.log1p(len_a) + rng.normal(0, 0.1, n)
    y_b = 2.0 * np.log1p(len_b) + rng.normal(0, 0.1, n)  # no effect beyond length
    d = P.length_controlled_difference(y_a, y_b, len_a, len_b, n_boot=300)
    assert d["raw"] == pytest.approx(2 * np.log(3), abs=0.05)
    assert d["raw_ci"][0] > 2.0
    assert abs(d["covariate"]) < 0.1  # length as covariate: no effect left
    assert np.isnan(d["binned"])  # no length bin holds both systems: no common support
    y_b2 = y_a + 1.0 + rng.normal(0, 0.1, n)  # a real effect of +1 at equal length
    d2 = P.length_controlled_difference(y_a, y_b2, len_a, len_a, n_boot=300)  # same lengths
    assert d2["covariate"] == pytest.approx(1.0, abs=0.05) and d2["binned"] == pytest.approx(1.0, abs=0.05)
    assert d2["covariate_ci"][0] > 0.9
    nan = P.length_controlled_difference([1.0], [2.0], [1.0], [1.0])
    assert nan["n"] == 1 and np.isnan(nan["covariate"])
