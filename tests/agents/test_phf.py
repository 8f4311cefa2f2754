"""PHF objectives train from configs/phf.py on the demo corpus (token scores = -reward)."""
import json

import pytest

from fairjax.errors import ConfigError
from trainer_fixtures import load_config, small_config


@pytest.mark.parametrize("objective", ["awr", "unlikelihood", "rwr"])
def test_phf_objectives_train_from_config(tmp_path, objective):
    from fairjax.train.build import train

    cfg = small_config("phf", **{"phf.objective": objective, "train.steps": 6,
                                 "train.log_every": 2, "train.eval_every": 0})
    train(cfg, tmp_path)
    logs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logs if r["split"] == "train"]
    assert len(losses) == 3 and all(abs(l) < 1e6 for l in losses)  # finite, logged
    assert losses[-1] != losses[0]
    if objective != "unlikelihood":  # UL mixes likelihood and unlikelihood terms
        assert losses[-1] < losses[0]


def test_conditional_is_refused_with_a_reason(tmp_path):
    from fairjax.train.build import train

    with pytest.raises(ConfigError, match="control tokens"):
        train(small_config("phf", **{"phf.objective": "conditional"}), tmp_path)


def test_unlikelihood_is_active_at_the_shipped_threshold(tmp_path):
    """configs/phf.py's ul_threshold is on the normalised token-score scale: some tokens are
    pushed down (aligned_frac < 1, ul_term > 0), not all (aligned_frac > 0)."""
    from fairjax.train.build import train

    cfg = small_config("phf", **{"phf.objective": "unlikelihood", "train.steps": 4,
                                 "train.log_every": 1, "train.eval_every": 0})
    assert cfg.phf.ul_threshold == load_config("phf").phf.ul_threshold  # the shipped default
    train(cfg, tmp_path)
    logs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in logs if r["split"] == "train"]
    aligned = sum(r["aligned_frac"] for r in rows) / len(rows)
    assert 0.0 < aligned < 1.0
    assert sum(r["ul_term"] for r in rows) > 0.0


def test_a_threshold_outside_the_score_range_is_refused(tmp_path):
    """The raw-reward-scale threshold of before (25) on standardised scores: no token above it."""
    from fairjax.train.build import train

    cfg = small_config("phf", **{"phf.objective": "unlikelihood", "phf.ul_threshold": 25.0})
    with pytest.raises(ConfigError, match=r"phf.ul_threshold=25.*plain NLL"):
        train(cfg, tmp_path)
