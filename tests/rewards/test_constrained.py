"""The faithful-rewrite reward (reward.scorer=constrained), its τ calibration, the reference field of
offline data, and texts without embedding features in the diversity matching."""
import json
import re

import numpy as np
import pytest

from fairjax.errors import ConfigError
from fairjax.evaluate import SANITY_TEXT
from fairjax.rewards import CandidatePool, DiversityConfig, DiversityScorer, HashingTfidfEmbedder
from fairjax.rewards.base import ScorerFailure
from fairjax.rewards.constrained import (ConstrainedConfig, ConstrainedScorer, calibrate_tau,
                                         lexicon_swaps)
from fairjax.rewards.diversity import NO_MATCH_REWARD
from fairjax.rewards.registry import build_reward_scorer, reward_config, reward_spec


# ----------------------------------------------------------------------------- no features
def _ordered_pool(n_female=50, n_male=50):
    """Female candidates first in file order, then male: a text matched to 'the first 50' would
    see only women."""
    texts = [f"nurse ward care patient {i}" for i in range(n_female)] + \
            [f"python backend engineer {i}" for i in range(n_male)]
    gender = np.array(["female"] * n_female + ["male"] * n_male, object)
    return CandidatePool(texts=texts, ids=[str(i) for i in range(len(texts))], gender=gender)


def test_text_without_features_matches_no_candidate():
    sc = DiversityScorer(_ordered_pool(), HashingTfidfEmbedder(n_features=256),
                         DiversityConfig(k=50, select_k=10))
    r = sc.evaluate(["", "!!! ??? ...", "python backend engineer"])
    np.testing.assert_array_equal(r.n_matched[:2], [0, 0])  # was 50: the first 50 candidates
    assert r.reward[0] == r.reward[1] == NO_MATCH_REWARD
    assert np.isnan(r.shares["gender"][:2]).all()
    assert r.n_matched[2] == 50 and r.reward[2] > NO_MATCH_REWARD
    strict = DiversityScorer(_ordered_pool(), HashingTfidfEmbedder(n_features=256),
                             DiversityConfig(k=50, select_k=10), strict=True)
    with pytest.raises(ScorerFailure, match="no embedding features"):
        strict.score_texts(["python backend engineer", ""])


# ----------------------------------------------------------------------------- real postings
@pytest.fixture(scope="module")
def real(shared_data_dir):
    d = shared_data_dir
    cfg = {"scorer": "constrained",
           "pool": f"{d / 'bios' / 'bios.jsonl'},{d / 'tech_bios' / 'bios.jsonl'}",
           "diversity": {"n_features": 4096}, "constrained": {"form": "hard", "tau": 0.9588}}
    with open(d / "hn_jobs" / "eval.jsonl", encoding="utf-8") as f:
        posts = [json.loads(line)["text"] for line in f]
    posts = [p for p in posts if "|" in p.split("\n", 1)[0]][:16]  # postings with an HN header
    return cfg, posts


def _sanity(posts):
    words = [p.split() for p in posts]
    shuffled = []
    for i, w in enumerate(words):
        w = list(w)
        np.random.default_rng(i).shuffle(w)
        shuffled.append(" ".join(w))
    return {"generic_text": [SANITY_TEXT] * len(posts), "shuffled_words": shuffled,
            "first_half": [" ".join(w[: len(w) // 2]) for w in words], "empty": [""] * len(posts)}


@pytest.mark.parametrize("form", ["hard", "smooth"])
def test_sanity_texts_score_below_the_originals(real, form):
    cfg, posts = real
    cfg = {**cfg, "constrained": {**cfg["constrained"], "form": form}}
    sc = build_reward_scorer(reward_config(cfg), strict=False)
    assert isinstance(sc, ConstrainedScorer) and sc.needs_reference
    base = sc.score_texts(posts, posts)  # an original is its own faithful rewrite
    assert np.all(sc.evaluate(posts, posts).faithful)
    plain = sc.diversity.score_texts
    for name, texts in _sanity(posts).items():
        r = sc.score_texts(texts, posts)
        if form == "hard":  # every sanity text below every original
            assert r.max() < base.min(), name
            assert np.all(r == sc.floor), name
        else:
            assert r.mean() < base.mean() - 10, name
    # without the constraint the generic text beats the originals (the reward this one fixes)
    assert plain([SANITY_TEXT])[0] > plain(posts).mean()


def test_floor_is_below_every_faithful_reward(real):
    cfg, posts = real
    cfg = {**cfg, "constrained": {"form": "hard", "tau": 0.9588, "gender_coded_weight": 10.0,
                                  "diversity_weight": 2.0, "margin": 0.5}}
    sc = build_reward_scorer(reward_config(cfg), strict=False)
    assert sc.bound == 100 * 2.0 * len(sc.diversity.attrs) + 10.0
    assert sc.floor == -sc.bound - 0.5
    # the worst faithful text: all masculine-coded wording, kept as its own original
    worst = ["competitive aggressive dominant ambitious assertive decisive leader " * 3]
    r = sc.evaluate(posts + worst, posts + worst)
    assert np.all(r.faithful) and np.all(r.fairness >= -sc.bound) and np.all(r.fairness <= 0)
    assert r.reward.min() > sc.floor


def test_header_fields_must_be_kept(real):
    cfg, posts = real
    cfg = {**cfg, "constrained": {"tau": 0.9}}
    sc = build_reward_scorer(reward_config(cfg), strict=False)
    from fairjax.eval.preservation import header_fields

    p = next(p for p in posts if (header_fields(p)["company"] or "").isalpha()
             and len(header_fields(p)["company"]) > 3)
    company = header_fields(p)["company"]
    renamed = re.sub(re.escape(company), "Acme", p, flags=re.IGNORECASE)
    r = sc.evaluate([renamed], [p])
    assert r.similarity[0] >= sc.config.tau  # still close as a whole ...
    assert r.header_kept[0] < 1 and not r.faithful[0] and r.reward[0] == sc.floor  # ... but not faithful
    smooth = ConstrainedScorer(sc.diversity, ConstrainedConfig(form="smooth", tau=sc.config.tau))
    s = smooth.evaluate([renamed, p], [p, p])
    assert s.reward[0] < s.fairness[0] and s.reward[1] == s.fairness[1]


def test_reward_spec_and_config_checks(real):
    cfg, _ = real
    spec = reward_spec(reward_config(cfg))
    assert spec["scorer"] == "constrained" and spec["constrained"]["tau"] == 0.9588
    assert "pools" in spec
    with pytest.raises(ConfigError, match=r"config.reward.constrained: form='soft'"):
        reward_config({**cfg, "constrained": {"form": "soft"}})
    with pytest.raises(ConfigError, match=r"config.reward.constrained: margin=0.0"):
        reward_config({**cfg, "constrained": {"margin": 0.0}})
    sc = build_reward_scorer(reward_config(cfg))
    with pytest.raises(ValueError, match="reference"):
        sc.score_texts(["x"])


def test_calibrate_tau_is_a_low_percentile_of_lexicon_swaps(real):
    _, posts = real
    emb = HashingTfidfEmbedder(n_features=1024).fit(posts)
    coded = [p + " We want a competitive, aggressive leader." for p in posts]
    out = calibrate_tau(coded, emb, percentile=5)
    swaps = lexicon_swaps(coded)
    assert all("competitive" not in s for s in swaps)
    v = emb.embed(coded + swaps)
    sims = (v[:len(coded)] * v[len(coded):]).sum(1)
    assert out["n_changed"] == len(coded)
    assert out["tau"] == pytest.approx(np.percentile(sims, 5), abs=1e-6)
    assert out["tau"] < out["similarity"]["p50"] < 1.0


# ----------------------------------------------------------------------------- offline references
class _RefLength:
    name, needs_reference = "ref_length", True

    def score_texts(self, texts, references):
        return np.array([len(r) for r in references], np.float64)


def test_offline_reward_reads_the_original_field(tmp_path):
    from fairjax.data.jobs import read_records
    from fairjax.rewards.precompute import build_rewards, require_references

    path = tmp_path / "aug.jsonl"
    rows = [{"id": "a", "text": "rewrite one", "original": "the original posting"},
            {"id": "b", "text": "a posting kept as it is"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recs = read_records(path)
    got, _ = build_rewards(path, recs, _RefLength(), {"scorer": "ref_length"}, tmp_path / "cache",
                           progress=False)
    np.testing.assert_array_equal(got, [len("the original posting"), len("a posting kept as it is")])
    require_references(recs, path, "constrained")  # one record has a reference: accepted
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"id": "c", "text": "a posting"}) + "\n")
    with pytest.raises(ConfigError, match=r"reward.scorer=constrained: .*plain.jsonl.*'original'"):
        require_references(read_records(plain), plain, "constrained")
