"""fairjax.eval.stats: NaN-aware summaries, bootstrap CIs, paired comparisons."""
import numpy as np
import pytest

from fairjax.eval import stats as S


def test_mean_std_ci_nan_aware():
    x = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    s = S.mean_std_ci(x, n_boot=500, seed=1)
    assert s["n"] == 4 and s["n_nan"] == 1
    assert s["mean"] == pytest.approx(2.5)
    assert s["std"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert s["stderr"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
    assert 1.0 <= s["ci_low"] < 2.5 < s["ci_high"] <= 4.0
    assert S.mean_std_ci(x, n_boot=500, seed=1) == s  # deterministic under a seed
    empty = S.mean_std_ci([np.nan, np.nan])
    assert empty["n"] == 0 and np.isnan(empty["mean"]) and np.isnan(empty["ci_low"])
    one = S.mean_std_ci([3.0])
    assert one["ci_low"] == one["ci_high"] == 3.0 and np.isnan(one["std"])
    assert S.mean_std_ci([True, False, True, True])["mean"] == pytest.approx(0.75)


def test_bootstrap_ci_matches_normal_theory_for_large_n():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=2000)
    lo, hi = S.bootstrap_ci(x, n_boot=2000, seed=0)
    nlo, nhi = S.normal_ci(x.mean(), x.std(ddof=1) / np.sqrt(x.size))
    assert lo == pytest.approx(nlo, abs=0.03) and hi == pytest.approx(nhi, abs=0.03)
    assert S.z_value(0.95) == pytest.approx(1.959964, abs=1e-6)


def test_bootstrap_stat_without_axis_equals_vectorised():
    x = np.arange(30, dtype=float)
    vec = S.bootstrap_distribution(x, np.median, n_boot=50, seed=3)
    loop = S.bootstrap_distribution(x, lambda v: float(np.median(v)), n_boot=50, seed=3)
    np.testing.assert_allclose(vec, loop)
    assert S.bootstrap_ci(x, np.median, n_boot=50, seed=3)[0] <= np.median(x)


def test_bootstrap_chunking_is_seamless(monkeypatch):
    x = np.random.default_rng(1).normal(size=100)
    full = S.bootstrap_distribution(x, n_boot=64, seed=5)
    monkeypatch.setattr(S, "_MAX_BOOT_ELEMS", 700)  # 7 resamples per chunk
    chunked = S.bootstrap_distribution(x, n_boot=64, seed=5)
    np.testing.assert_allclose(np.sort(full), np.sort(chunked))


def test_paired_comparison():
    before = [1.0, 2.0, 3.0, np.nan, 5.0]
    after = [2.0, 2.0, 5.0, 1.0, 4.0]
    pc = S.paired_comparison(before, after, n_boot=300)
    d = np.array([1.0, 0.0, 2.0, -1.0])
    assert pc["n"] == 4 and pc["mean_diff"] == pytest.approx(0.5)
    assert pc["mean_before"] == pytest.approx(2.75) and pc["mean_after"] == pytest.approx(3.25)
    assert pc["stderr"] == pytest.approx(d.std(ddof=1) / 2)
    assert pc["t_stat"] == pytest.approx(0.5 / (d.std(ddof=1) / 2))
    assert (pc["wins"], pc["ties"], pc["losses"]) == (2, 1, 1)
    assert pc["win_rate"] == pytest.approx(0.5)
    assert pc["ci_low"] <= 0.5 <= pc["ci_high"]
    assert pc["ci_normal_low"] == pytest.approx(0.5 - 1.959964 * pc["stderr"], rel=1e-5)
    assert S.paired_comparison([1.0, 2.0], [1.05, 1.0], tie_tol=0.1)["ties"] == 1


def test_paired_vs_welch_stderr():
    rng = np.random.default_rng(2)
    base = rng.normal(size=500)
    a, b = base + 0.1 * rng.normal(size=500), base + 0.1 * rng.normal(size=500)
    # Strongly correlated arms: the paired SE is far smaller than the unpaired one.
    assert S.paired_stderr(a, b) < 0.2 * S.welch_stderr(a, b)
    assert S.welch_stderr(a, b) == pytest.approx(np.sqrt(a.var(ddof=1) / 500 + b.var(ddof=1) / 500))


def test_bad_inputs():
    with pytest.raises(ValueError, match="equal lengths"):
        S.paired_comparison([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="1-D"):
        S.mean_std_ci(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="numeric"):
        S.mean_std_ci(["a", "b"])
    with pytest.raises(ValueError, match="ci must be"):
        S.bootstrap_ci([1.0, 2.0], ci=1.5)
    with pytest.raises(ValueError, match="n_boot"):
        S.bootstrap_ci([1.0, 2.0], n_boot=0)
