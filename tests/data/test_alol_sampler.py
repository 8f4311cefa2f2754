"""A-LoL priority sampler: drops A <= 0, p ∝ A⁺, with replacement, seeded and resumable."""
import numpy as np
import pytest

from fairjax.data.alol_sampler import PrioritySampler, scaled_steps

ADV = np.array([0.5, -1.0, 0.0, 1.5, 2.0, -0.2])  # positive: idx 0, 3, 4 with p = .125, .375, .5


def test_good_priority_statistics():
    s = PrioritySampler(ADV, "good_priority", seed=0)
    np.testing.assert_array_equal(s.indices, [0, 3, 4])
    np.testing.assert_allclose(s.probs, [0.125, 0.375, 0.5])
    assert s.positive_ratio == pytest.approx(0.5)
    n = 40_000
    draws = s.sample(n)
    assert set(np.unique(draws)) == {0, 3, 4}  # A <= 0 never drawn
    freq = np.array([(draws == i).mean() for i in (0, 3, 4)])
    np.testing.assert_allclose(freq, [0.125, 0.375, 0.5], atol=4 * np.sqrt(0.25 / n))
    # with replacement: a batch larger than the support is fine and repeats indices
    assert len(np.unique(s.sample(16))) <= 3
    assert scaled_steps(9000, s) == 4500


def test_seeded_and_resumable():
    a, b = PrioritySampler(ADV, seed=7), PrioritySampler(ADV, seed=7)
    np.testing.assert_array_equal(a.sample(50), b.sample(50))
    state = a.state()
    first = a.sample(20)
    a.restore(state)
    np.testing.assert_array_equal(a.sample(20), first)
    assert not np.array_equal(PrioritySampler(ADV, seed=8).sample(50), b.sample(50))


def test_other_strategies_and_errors():
    s = PrioritySampler(ADV, "good_random", seed=0)
    np.testing.assert_allclose(s.probs, [1 / 3] * 3)
    u = PrioritySampler(ADV, "uniform", seed=0)
    assert u.positive_ratio == 1.0 and set(np.unique(u.sample(2000))) == set(range(6))
    with pytest.raises(ValueError, match="positive"):
        PrioritySampler([-1.0, 0.0])
    with pytest.raises(ValueError, match="finite"):
        PrioritySampler([1.0, np.nan])
    with pytest.raises(ValueError, match="strategy"):
        PrioritySampler(ADV, "all")
