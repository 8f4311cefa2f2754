"""PHF objectives train from configs/phf.py on the demo corpus (token scores = -reward)."""
import json

import pytest

from fairjax.errors import ConfigError
from trainer_fixtures import small_config


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
