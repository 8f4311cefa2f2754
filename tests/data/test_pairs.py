"""DPO pairs: explicit JSONL, reward-ranked counterfactual pairs, and DPO trained from the config."""
import json

import numpy as np
import pytest

from fairjax.data.jobs import DataError
from fairjax.data.pairs import Pair, pairs_from_postings, read_pairs
from trainer_fixtures import small_config


class CountScorer:
    """Reward = number of occurrences of 'collaborative' (a feminine-coded word)."""

    def score_texts(self, texts):
        return np.array([t.lower().count("collaborative") for t in texts], float)


def test_pairs_from_postings_rank_by_reward_and_drop_unchanged():
    prompts = ["p1", "p2", "p3"]
    responses = ["We want an aggressive, competitive engineer.",  # masculine-coded: rewritten
                 "Plain text with no coded words at all.",  # rewrite == original: dropped
                 "A collaborative and supportive team."]  # feminine-coded: rewritten
    pairs = pairs_from_postings(prompts, responses, CountScorer())
    by_prompt = {p.prompt: p for p in pairs}
    assert "p2" not in by_prompt
    for p in pairs:
        s = CountScorer().score_texts([p.chosen, p.rejected])
        assert s[0] > s[1] and p.margin == pytest.approx(s[0] - s[1])
    assert pairs == pairs_from_postings(prompts, responses, CountScorer())  # deterministic
    assert pairs_from_postings(prompts, responses, CountScorer(), min_margin=10) == []


def test_read_pairs_errors_name_the_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n{bad\n")
    with pytest.raises(DataError, match=r"p.jsonl:2: invalid JSON"):
        read_pairs(f)
    f.write_text(json.dumps({"prompt": "a", "chosen": "b"}) + "\n")
    with pytest.raises(DataError, match=r"p.jsonl:1: .*'rejected'"):
        read_pairs(f)
    f.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
    assert read_pairs(f) == [Pair("a", "b", "c")]


def test_dpo_trains_from_config_on_explicit_pairs(tmp_path):
    from fairjax.train.build import train

    rng = np.random.default_rng(0)
    words = ["team", "build", "ship", "data", "care", "grow", "learn", "code"]
    with open(tmp_path / "pairs.jsonl", "w") as f:
        for i in range(32):
            w = " ".join(rng.choice(words, 6))
            f.write(json.dumps({"prompt": f"job {i}: {w}", "chosen": "we are collaborative " + w,
                                "rejected": "we are aggressive " + w}) + "\n")
    cfg = small_config("dpo", **{"train.steps": 12, "train.log_every": 4, "train.eval_every": 0,
                                 "optim.lr": 3e-3, "dpo.pairs": str(tmp_path / "pairs.jsonl"),
                                 "dpo.beta": 0.5})
    train(cfg, tmp_path / "run")
    logs = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in logs if r["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]
    assert train[-1]["rewards/accuracy"] >= train[0]["rewards/accuracy"]


@pytest.mark.slow
def test_dpo_trains_on_derived_pairs_with_the_shipped_defaults(tmp_path):
    """configs/dpo.py as shipped (derived pairs, default scorer and pool) trains: the pool is the
    demo candidates beside the source data, not beside its rewarded copy."""
    from fairjax.train.build import train

    cfg = small_config("dpo", **{"train.steps": 1, "train.eval_every": 0,
                                 "data.demo_postings": 80, "optim.batch_size": 4})
    train(cfg, tmp_path / "run")
    spec = json.loads((tmp_path / "run" / "reward_spec.json").read_text())
    assert spec["scorer"] == "diversity"
    logs = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if r["split"] == "train"] == [1]


def test_dpo_pairs_are_ranked_by_the_configured_reward(tmp_path):
    """The pair scorer is `reward.scorer` with its settings and (comma-separated) pools."""
    from fairjax.agents.dpo import pair_scorer
    from fairjax.data.demo import write_demo
    from fairjax.errors import ConfigError
    from fairjax.rewards.pool import load_pool

    write_demo(tmp_path, n_postings=20, seed=0)
    train = str(tmp_path / "jobs_train.jsonl")
    pool = str(tmp_path / "candidates.jsonl")
    cfg = small_config("dpo", **{"reward.scorer": "gender_coded",
                                 "reward.gender_coded.mode": "difference",
                                 "reward.cache_dir": str(tmp_path / "cache")})
    s = pair_scorer(cfg, train)
    assert "gender_coded" in s.name and s.base.mode == "difference"
    cfg.reward.scorer, cfg.reward.pool = "diversity", f"{pool},{pool}"
    cfg.reward.diversity.k = 17
    s = pair_scorer(cfg, train)
    assert len(s.pool) == 2 * len(load_pool(pool)) and s.config.k == 17
    cfg.reward.scorer = ""
    with pytest.raises(ConfigError, match="reward.scorer"):
        pair_scorer(cfg, train)
