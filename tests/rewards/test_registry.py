"""The reward block as a typed RewardConfig (`rewards.registry.reward_config`): unknown fields and
bad values name their key, and a run dir's saved config written before the newer fields still
gives its scorer."""
import json

import numpy as np
import pytest
from ml_collections import ConfigDict

from fairjax.errors import ConfigError
from fairjax.rewards.embedders import HashingTfidfEmbedder
from fairjax.rewards.registry import (CompositeConfig, RewardConfig, build_reward_scorer,
                                      reward_config, reward_spec, trained_reward)


def _pool(tmp_path):
    p = tmp_path / "candidates.jsonl"
    rows = [("python backend engineer postgres", "male"), ("python data engineer spark", "female"),
            ("nurse at a city hospital", "female"), ("accountant with cpa exams", "male")]
    p.write_text("".join(json.dumps({"id": f"c{i}", "text": t, "gender": g}) + "\n"
                         for i, (t, g) in enumerate(rows)))
    return str(p)


@pytest.mark.parametrize("block, key", [
    ({"scorer": "diversity", "scorrer": "pii"}, "config.reward.scorrer"),
    ({"scorer": "diversity", "diversity": {"top_k": 5}}, "config.reward.diversity.top_k"),
    ({"scorer": "constrained", "constrained": {"tau": 0.9, "floor": -3}},
     "config.reward.constrained.floor"),
    ({"scorer": "composite", "composite": {"terms": "pii", "weight": "1"}},
     "config.reward.composite.weight"),
])
def test_an_unknown_reward_field_names_its_key(block, key):
    with pytest.raises(ConfigError, match=rf"^{key}: unknown field; "):
        reward_config(ConfigDict(block))


@pytest.mark.parametrize("block, match", [
    ({"scorer": "bleu"}, r"config.reward.scorer='bleu'; expected one of \['', 'diversity'"),
    ({"normalize": "zscore"}, r"config.reward.normalize='zscore'; expected one of \['none'"),
    ({"diversity": {"distance": "l2"}}, r"config.reward.diversity: distance='l2'"),
    ({"diversity": {"k": 5, "select_k": 9}}, r"config.reward.diversity: need 0 < select_k <= k"),
    ({"diversity": {"n_features": 0}}, r"config.reward.diversity: n_features=0"),
    ({"gender_coded": {"mode": "sum"}}, r"config.reward.gender_coded: mode='sum'"),
    ({"preservation": {"metric": "bleu"}}, r"config.reward.preservation: metric='bleu'"),
    ({"composite": {"terms": "pii,diversity", "weights": "1,x"}},
     r"config.reward.composite: weights=\['1', 'x'\]: not numbers"),
    ({"scorer": "composite", "composite": {"terms": ""}}, r"config.reward.composite.terms is empty"),
    ({"constrained": {"tau": 1.5}}, r"config.reward.constrained: tau=1.5: a cosine"),
    ({"constrained": {"form": "soft"}}, r"config.reward.constrained: form='soft'"),
])
def test_a_bad_reward_value_names_its_key(block, match):
    with pytest.raises(ConfigError, match=match):
        reward_config(ConfigDict(block))


def test_the_typed_block_holds_parsed_values(tmp_path):
    rc = reward_config(ConfigDict({"scorer": "composite", "pool": " a.jsonl, b.jsonl ",
                                   "embedder": " ", "composite": {"terms": "diversity, pii",
                                                                  "weights": ""}}))
    assert rc.pool == ("a.jsonl", "b.jsonl") and rc.embedder == "tfidf"
    assert rc.composite.items() == [("diversity", 1.0), ("pii", 1.0)]
    assert rc.uses("pii") and not rc.uses("gender_coded") and rc.normalize == "none"
    assert reward_config(rc) is rc  # typed once; a RewardConfig passes through
    with pytest.raises(AttributeError):
        rc.scorer = "pii"  # frozen
    assert CompositeConfig(("pii",), (2.0,)).items() == [("pii", 2.0)]
    assert RewardConfig() == reward_config(None)


def test_validate_config_checks_the_reward_block():
    from fairjax.train.build import validate_config
    from trainer_fixtures import small_config

    validate_config(small_config("ilql"))
    with pytest.raises(ConfigError, match=r"config.reward.diversity: gender_target='men'"):
        validate_config(small_config("ilql", **{"reward.diversity.gender_target": "men"}))
    with pytest.raises(ConfigError, match=r"config.reward.scorer='bleu'"):
        validate_config(small_config("ilql", **{"reward.scorer": "bleu"}))


# a run dir's config.json from before reward.normalize / cache_dir / embedder / constrained existed
OLD_REWARD = {"field": "reward", "scorer": "diversity", "pool": "",
              "diversity": {"k": 2, "select_k": 1, "distance": "signed_tv",
                            "gender_target": "uniform", "region_target": "pool",
                            "n_features": 256},
              "gender_coded": {"mode": "ratio"}, "preservation": {"metric": "cosine"},
              "composite": {"terms": "diversity,preservation", "weights": "1,20"}}


def test_an_old_saved_config_still_builds_its_scorer(tmp_path):
    from fairjax.evaluate import training_scorer
    from fairjax.io.run_dir import load_config

    pool = _pool(tmp_path)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    saved = {"algorithm": "ilql", "seed": 0, "reward": {**OLD_REWARD, "pool": pool},
             "data": {"train": "", "eval": "", "text_field": "text"}}
    (run / "config.json").write_text(json.dumps(saved))
    rc = reward_config(load_config(run).reward)
    assert rc.embedder == "tfidf" and rc.normalize == "none" and rc.cache_dir == ""
    assert rc.constrained.tau == 0.9588  # the tfidf calibration: what such runs were scored with
    scorer = build_reward_scorer(rc)
    assert isinstance(scorer.embedder, HashingTfidfEmbedder) and scorer.embedder.n_features == 256
    texts = ["python backend engineer", "nurse at the hospital"]
    assert np.all(np.isfinite(scorer.score_texts(texts)))
    assert reward_spec(rc)["embedder"] == {"name": "tfidf"}
    # the evaluation rebuilds the training reward of such a run dir, and summaries name it
    fallback = build_reward_scorer(reward_config({**OLD_REWARD, "pool": pool}))
    got, why = training_scorer(str(run), fallback)
    assert got is not fallback and "the training reward of" in why
    np.testing.assert_allclose(got.score_texts(texts), scorer.score_texts(texts))
    assert trained_reward(load_config(run), run) == {"scorer": "diversity", "normalize": "none"}
    # an even older one: no reward block beyond field and scorer ("" = the data's own field)
    (run / "config.json").write_text(json.dumps({**saved, "reward": {"field": "reward",
                                                                     "scorer": ""}}))
    assert trained_reward(load_config(run), run)["scorer"] == "demo_standin"
    assert training_scorer(str(run), fallback)[0] is fallback
