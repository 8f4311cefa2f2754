"""reward.scorer from the config, the cached reward data build and reward normalisation."""
import json

import numpy as np
import pytest
from ml_collections import ConfigDict
from scipy.stats import rankdata

from fairjax.data.jobs import read_records
from fairjax.rewards import normalize as N
from fairjax.rewards.base import ScorerFailure
from fairjax.rewards.lexicon import GenderCodedScorer
from fairjax.rewards.pii import PiiScorer
from fairjax.rewards.precompute import RewardBuildError, build_rewards
from fairjax.rewards.registry import build_reward_scorer, reward_config, reward_spec, spec_hash


# --------------------------------------------------------------------------- normalisation
def test_normalizers_fit_on_train_and_apply_identically(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.normal(-22.0, 4.0, 200)
    train[:20] = train[20]  # ties
    new = np.array([-40.0, -22.0, train[20], 0.0])
    s = N.fit_normalizer(train, "standardize")
    np.testing.assert_allclose(N.apply_normalizer(train, s).mean(), 0.0, atol=1e-12)
    np.testing.assert_allclose(N.apply_normalizer(train, s).std(), 1.0)
    m = N.fit_normalizer(train, "minmax")
    out = N.apply_normalizer(train, m)
    assert out.min() == 0.0 and out.max() == 1.0
    r = N.fit_normalizer(train, "rank")
    # on the train values, rank = (scipy's average rank - 1/2) / n - 1/2
    np.testing.assert_allclose(N.apply_normalizer(train, r), (rankdata(train) - 0.5) / train.size - 0.5)
    ranked_new = N.apply_normalizer(new, r)
    assert ranked_new[0] == pytest.approx(r["cdf"][0] - 0.5) and ranked_new[-1] == pytest.approx(r["cdf"][-1] - 0.5)
    assert np.all(np.diff(N.apply_normalizer(np.sort(new), r)) >= 0)
    np.testing.assert_array_equal(N.apply_normalizer(new, N.fit_normalizer(train, "none")), new)
    for stats in (s, m, r):  # stored in the run dir, reloaded, applied -> the same numbers
        N.save_normalizer(stats, tmp_path / "norm.json")
        np.testing.assert_array_equal(N.apply_normalizer(new, N.load_normalizer(tmp_path / "norm.json")),
                                      N.apply_normalizer(new, stats))
    const = N.fit_normalizer(np.full(5, -3.0), "standardize")
    np.testing.assert_array_equal(N.apply_normalizer([-3.0, -2.0], const), [0.0, 1.0])
    with pytest.raises(ValueError, match="reward.normalize='zscore'"):
        N.fit_normalizer(train, "zscore")
    with pytest.raises(ValueError, match="reward 1 is nan"):
        N.fit_normalizer([1.0, np.nan], "standardize")
    (tmp_path / "x.json").write_text('{"mode": "rank"}')
    with pytest.raises(ValueError, match="x.json: not reward-normalizer"):
        N.load_normalizer(tmp_path / "x.json")


# --------------------------------------------------------------------------- scorers
def _pool(tmp_path):
    rows = [("python backend engineer postgres", "male"), ("python data engineer spark", "female"),
            ("nurse at a city hospital", "female"), ("accountant with cpa exams", "male"),
            ("zzz qqq www unlabelled", None), ("zzz qqq www also unlabelled", None)]
    labelled, unlabelled = tmp_path / "pool.jsonl", tmp_path / "pool_nolabel.jsonl"
    labelled.write_text("".join(json.dumps({"id": f"c{i}", "text": t, "gender": g}) + "\n"
                                for i, (t, g) in enumerate(rows) if g))
    unlabelled.write_text("".join(json.dumps({"id": f"u{i}", "text": t}) + "\n"
                                  for i, (t, g) in enumerate(rows) if not g))
    return f"{labelled},{unlabelled}"


def _cfg(tmp_path, scorer, **kw):
    c = ConfigDict({"scorer": scorer, "pool": _pool(tmp_path),
                    "diversity": {"k": 2, "select_k": 1, "distance": "signed_tv",
                                  "gender_target": "uniform", "region_target": "pool", "n_features": 256},
                    "gender_coded": {"mode": "ratio"}, "preservation": {"metric": "cosine"},
                    "composite": {"terms": "diversity,gender_coded,pii", "weights": "1,2,3"}})
    c.update(kw)
    return c


def _rc(tmp_path, scorer, **kw):
    """The typed reward block of `_cfg`."""
    return reward_config(_cfg(tmp_path, scorer, **kw))


TEXTS = ["python engineer: aggressive, competitive, dominant", "nurse, kind and supportive; a@b.io"]


def test_composite_is_the_weighted_sum_of_its_terms(tmp_path):
    comp = build_reward_scorer(_rc(tmp_path, "composite"))
    div = build_reward_scorer(_rc(tmp_path, "diversity"))
    gc = build_reward_scorer(_rc(tmp_path, "gender_coded"))
    pii = build_reward_scorer(_rc(tmp_path, "pii"))
    np.testing.assert_allclose(gc.score_texts(TEXTS), -np.abs(GenderCodedScorer().score_texts(TEXTS)))
    np.testing.assert_allclose(pii.score_texts(TEXTS), -PiiScorer().score_texts(TEXTS))
    assert gc.score_texts(TEXTS)[0] == -1.0 and pii.score_texts(TEXTS)[1] < 0
    want = div.score_texts(TEXTS) + 2 * gc.score_texts(TEXTS) + 3 * pii.score_texts(TEXTS)
    np.testing.assert_allclose(comp.score_texts(TEXTS), want)
    pres = build_reward_scorer(_rc(tmp_path, "composite", composite={"terms": "diversity,preservation",
                                                                      "weights": "1,20"}))
    same = pres.score_texts(TEXTS, TEXTS)
    other = pres.score_texts(TEXTS, TEXTS[::-1])
    np.testing.assert_allclose(same - div.score_texts(TEXTS), 20.0, rtol=1e-6)  # cosine 1 with itself
    assert np.all(other < same) and pres.needs_reference


@pytest.mark.parametrize("kw, match", [
    ({"scorer": "bleu"}, r"reward.scorer='bleu'"),
    ({"composite": {"terms": "diversity,toxicity", "weights": "1,1"}},
     r"config.reward.composite: terms='diversity,toxicity': \['toxicity'\] not in"),
    ({"composite": {"terms": "diversity,pii", "weights": "1"}}, "1 values for 2 terms"),
    ({"composite": {"terms": "pii,pii", "weights": "1,1"}}, "repeats"),
    ({"pool": "/nonexistent.jsonl"}, "nonexistent.jsonl: no such file"),
])
def test_bad_reward_configs_name_the_key(tmp_path, kw, match):
    cfg = _cfg(tmp_path, "composite")
    cfg.update(kw)
    with pytest.raises(ValueError, match=match):
        build_reward_scorer(reward_config(cfg))


def test_spec_hash_changes_with_the_scores(tmp_path):
    base = reward_spec(_rc(tmp_path, "composite"))
    assert spec_hash(base) == spec_hash(reward_spec(_rc(tmp_path, "composite")))
    other_w = _rc(tmp_path, "composite", composite={"terms": "diversity,gender_coded,pii",
                                                     "weights": "1,2,4"})
    other_k = _cfg(tmp_path, "composite")
    other_k.diversity.k = 3
    other_k = reward_config(other_k)
    assert len({spec_hash(base), spec_hash(reward_spec(other_w)), spec_hash(reward_spec(other_k))}) == 3


# --------------------------------------------------------------------------- data build
class _Counting:
    name = "len"

    def __init__(self, fail_on=None, nan_on=None):
        self.seen, self.fail_on, self.nan_on = [], fail_on, nan_on

    def score_texts(self, texts):
        if self.fail_on in texts:
            raise RuntimeError("boom")
        self.seen += list(texts)
        return np.array([np.nan if t == self.nan_on else len(t) for t in texts], np.float64)


def _data(tmp_path, texts):
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return p, read_records(p)


def test_build_caches_by_data_and_scorer_hash(tmp_path):
    path, recs = _data(tmp_path, ["aa", "b", "cccc", "dd"])
    spec = {"scorer": "len"}
    s1 = _Counting()
    r1, cache = build_rewards(path, recs, s1, spec, tmp_path / "cache", batch_size=3, progress=False)
    np.testing.assert_array_equal(r1, [2, 1, 4, 2]) and len(s1.seen) == 4
    s2 = _Counting()
    r2, cache2 = build_rewards(path, recs, s2, spec, tmp_path / "cache", progress=False)
    assert cache2 == cache and s2.seen == [] and np.array_equal(r1, r2)  # second run: all reused
    s3 = _Counting()
    _, cache3 = build_rewards(path, recs, s3, {"scorer": "len", "k": 2}, tmp_path / "cache", progress=False)
    assert cache3 != cache and len(s3.seen) == 4  # another scorer config: its own cache
    with pytest.raises(RewardBuildError, match=r"scorer_sha256=.*not reused"):
        build_rewards(path, recs, _Counting(), {"scorer": "len", "k": 2}, tmp_path / "cache",
                      progress=False, cache_path=cache)
    path.write_text(path.read_text() + json.dumps({"id": "r4", "text": "e"}) + "\n")
    s4 = _Counting()
    _, cache4 = build_rewards(path, read_records(path), s4, spec, tmp_path / "cache", progress=False)
    assert cache4 != cache and len(s4.seen) == 5  # another data file hash: rebuilt
    with pytest.raises(RewardBuildError, match=r"data_sha256=.*not reused"):
        build_rewards(path, read_records(path), _Counting(), spec, tmp_path / "cache", progress=False,
                      cache_path=cache)


@pytest.mark.parametrize("kw, match", [({"fail_on": "cccc"}, "RuntimeError: boom"),
                                       ({"nan_on": "cccc"}, "reward is nan")])
def test_scorer_failure_names_the_record_and_keeps_the_cache(tmp_path, kw, match):
    path, recs = _data(tmp_path, ["aa", "b", "cccc", "dd"])
    with pytest.raises(RewardBuildError, match=rf"train.jsonl:3: record id 'r2': scorer len failed: {match}"):
        build_rewards(path, recs, _Counting(**kw), {"scorer": "len"}, tmp_path / "c", batch_size=2,
                      progress=False)
    s = _Counting()  # the two records scored before the failure are cached and not scored again
    recs_ok = [r for r in recs if r["id"] != "r2"]
    r, _ = build_rewards(path, recs_ok, s, {"scorer": "len"}, tmp_path / "c", progress=False)
    assert s.seen == ["dd"] and list(r) == [2, 1, 2]


def test_empty_candidate_match_stops_the_build(tmp_path):
    cfg = _rc(tmp_path, "diversity")
    path, recs = _data(tmp_path, ["python backend engineer postgres", "zzz qqq www"])
    with pytest.raises(RewardBuildError, match=r"train.jsonl:2: record id 'r1'.*empty candidate match"):
        build_rewards(path, recs, build_reward_scorer(cfg), reward_spec(cfg), tmp_path / "c",
                      progress=False)
    lenient = build_reward_scorer(cfg, strict=False)
    assert lenient.score_texts(["zzz qqq www"])[0] == -100.0
    with pytest.raises(ScorerFailure, match="text 0: empty candidate match"):
        build_reward_scorer(cfg).score_texts(["zzz qqq www"])


# --------------------------------------------------------------------------- run-dir wiring
def _run_cfg(tmp_path, algorithm="ilql", scorer="diversity", normalize="standardize"):
    reward = _cfg(tmp_path, scorer)
    reward.update({"normalize": normalize, "cache_dir": str(tmp_path / "cache"), "field": "reward"})
    return ConfigDict({"algorithm": algorithm, "reward": reward,
                       "data": {"train": "x", "text_field": "text", "on_error": "raise"}})


def _prepare(cfg, run_dir, train, ev, **kw):
    """prepare_rewards as train/build.training_rewards calls it: the typed reward block, the
    objective's name and the data settings."""
    from fairjax.rewards.training import prepare_rewards

    return prepare_rewards(reward_config(cfg.reward), run_dir, train, ev, algorithm=cfg.algorithm,
                           demo_data=not cfg.data.train, text_field=cfg.data.text_field,
                           on_error=cfg.data.on_error, **kw)


def test_prepare_rewards_scores_normalises_and_stores_in_the_run_dir(tmp_path):
    from fairjax.rewards.registry import RUN_NORMALIZER_FILE, RUN_SPEC_FILE, trained_reward

    texts = ["python backend engineer postgres", "nurse at the city hospital", "python data spark"]
    train, _ = _data(tmp_path, texts)
    ev = tmp_path / "eval.jsonl"
    ev.write_text(json.dumps({"id": "e0", "text": "accountant cpa", "company": "Acme"}) + "\n")
    cfg = _run_cfg(tmp_path)
    run = tmp_path / "run"
    tr, ev_out = _prepare(cfg, run, str(train), str(ev), progress=False)
    rows = [json.loads(x) for x in open(tr)]
    raw = build_reward_scorer(reward_config(cfg.reward)).score_texts(texts)
    np.testing.assert_allclose([r["reward_raw"] for r in rows], raw)
    np.testing.assert_allclose([r["reward"] for r in rows], (raw - raw.mean()) / raw.std())
    ev_row = json.loads(open(ev_out).read())
    assert ev_row["company"] == "Acme"  # the record as written, plus its rewards
    stats = N.load_normalizer(run / RUN_NORMALIZER_FILE)
    assert ev_row["reward"] == pytest.approx(float(N.apply_normalizer([ev_row["reward_raw"]], stats)[0]))
    spec = trained_reward(None, run)
    assert spec["scorer"] == "diversity" and spec["normalize"] == "standardize"
    assert json.loads((run / RUN_SPEC_FILE).read_text()) == spec
    # resuming with another normalisation is refused; with the same one, the stored stats are reused
    with pytest.raises(ValueError, match="trained with reward.normalize='standardize'"):
        _prepare(_run_cfg(tmp_path, normalize="rank"), run, str(train), str(ev), progress=False)
    (run / RUN_NORMALIZER_FILE).write_text(json.dumps({**stats, "mean": 0.0, "std": 1.0}))
    tr2, _ = _prepare(cfg, run, str(train), None, progress=False)
    np.testing.assert_allclose([json.loads(x)["reward"] for x in open(tr2)], raw)


def test_prepare_rewards_bc_and_field_rewards(tmp_path):

    train, _ = _data(tmp_path, ["a b", "c d"])  # no reward field
    run = tmp_path / "run"
    assert _prepare(_run_cfg(tmp_path, "bc"), run, str(train), None,
                           trains_on_reward=False) == (str(train), None)
    assert json.loads((run / "reward_spec.json").read_text())["scorer"] == "none"
    with pytest.raises(ValueError, match=r"train.jsonl:1: record id 'r0' has no 'reward'"):
        _prepare(_run_cfg(tmp_path, scorer="", normalize="minmax"), run, str(train), None)


def test_demo_standin_reward_is_named(tmp_path):
    from fairjax.rewards.registry import trained_reward

    train, _ = _data(tmp_path, ["a b"])
    cfg = _run_cfg(tmp_path, scorer="", normalize="none")
    cfg.data.train = ""  # the demo corpus: its 'reward' field is the generator's stand-in
    _prepare(cfg, tmp_path / "run", str(train), None)
    spec = trained_reward(None, tmp_path / "run")
    assert spec["scorer"] == "demo_standin" and "stand-in lexical reward" in spec["note"]


@pytest.mark.parametrize("scorer,composite,match", [
    ("preservation", None, r"reward.scorer='preservation'"),
    ("composite", {"terms": "diversity,preservation", "weights": "1,20"},
     r"composite.terms='diversity,preservation'")])
def test_offline_objectives_refuse_terms_that_need_a_reference(tmp_path, scorer, composite, match):
    """Scored against itself, every offline posting would get preservation 1."""

    train, _ = _data(tmp_path, ["python backend engineer", "nurse at the hospital", "python data"])
    cfg = _run_cfg(tmp_path, scorer=scorer)
    if composite:
        cfg.reward.composite.update(composite)
    with pytest.raises(ValueError, match=match + ".*ilql trains offline"):
        _prepare(cfg, tmp_path / "run", str(train), None, progress=False)
    assert not (tmp_path / "run" / "data").exists()


def test_a_constant_training_reward_stops_the_build_naming_it(tmp_path):

    train, _ = _data(tmp_path, ["python backend engineer", "nurse at the hospital", "data work"])
    cfg = _run_cfg(tmp_path, scorer="gender_coded")  # no gender-coded word: every reward 0
    with pytest.raises(ValueError, match=r"reward 'gender_coded' is the constant 0 on all 3"):
        _prepare(cfg, tmp_path / "run", str(train), None, progress=False)
    p = tmp_path / "field.jsonl"
    p.write_text("".join(json.dumps({"id": f"r{i}", "text": "t", "reward": 2.5}) + "\n"
                         for i in range(4)))
    with pytest.raises(ValueError, match=r"reward 'data_field' is the constant 2.5"):
        _prepare(_run_cfg(tmp_path, scorer=""), tmp_path / "run2", str(p), None,
                        progress=False)
