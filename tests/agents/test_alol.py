"""A-LoL priority sampling in the trainer: only A > 0 examples, frequency grows with A
(A = R − V(x) per example; here a constant V = 2.4 so the expected shares are closed-form)."""
import numpy as np
import pytest

from fairjax.errors import ConfigError
from trainer_fixtures import small_config


class Ep:
    def __init__(self, r):
        self.sequence_reward = r


def _adv(eps, value=2.4):
    return np.array([e.sequence_reward - value for e in eps])


def test_good_priority_draws_positive_advantages_in_proportion():
    from fairjax.agents.alol import alol_resample

    eps = [Ep(r) for r in (0.0, 1.0, 2.0, 3.0, 6.0)]  # mean 2.4: A+ = 0, 0, 0, 0.6, 3.6
    out = alol_resample(small_config("alol", **{"alol.sampling": "good_priority"}), eps * 400, _adv(eps * 400))
    r = np.array([e.sequence_reward for e in out])
    assert set(r) == {3.0, 6.0}
    assert abs((r == 6.0).mean() - 3.6 / 4.2) < 0.03
    same = alol_resample(small_config("alol", **{"alol.sampling": "good_priority"}), eps * 400, _adv(eps * 400))
    assert [e.sequence_reward for e in same] == list(r)  # seeded
    uni = alol_resample(small_config("alol", **{"alol.sampling": "uniform"}), eps, _adv(eps))
    assert uni == eps
    gr = alol_resample(small_config("alol", **{"alol.sampling": "good_random"}), eps * 400, _adv(eps * 400))
    assert abs(np.mean([e.sequence_reward == 6.0 for e in gr]) - 0.5) < 0.05
    with pytest.raises(ConfigError, match="positive"):
        alol_resample(small_config("alol"), [Ep(-1.0), Ep(-2.0)], np.array([-1.0, -2.0]))
