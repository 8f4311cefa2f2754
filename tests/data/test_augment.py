"""Rewrite-augmented data (fairjax.data.augment): K+1 rows per posting with `original` and the
cached training reward, prompts from the original, DPO pairs from the best/worst faithful
response; a 2-round ReST run (fairjax.rest) on the demo corpus."""
import json

import numpy as np
import pytest

from fairjax.data import augment as A
from fairjax.data.jobs import JobsDataset, build_prompt, extract_fields
from trainer_fixtures import load_config, set_dotted


class Sampler:
    """A stand-in policy: call j appends a different sentence (K distinct rewrites)."""

    name = "stub"

    def __init__(self):
        self.calls = 0

    def rewrite(self, texts):
        self.calls += 1
        return [f"{t} Variant {self.calls} welcomes supportive teammates." for t in texts]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from fairjax.data.demo import write_demo

    return write_demo(tmp_path_factory.mktemp("demo"), n_postings=30, n_candidates=120)


def _reward_cfg(pool, cache):
    """The ilql config's reward block, typed, scoring diversity over `pool`."""
    from fairjax.rewards.registry import reward_config

    c = load_config("ilql").reward
    c.unlock()
    c.scorer, c.pool, c.cache_dir = "diversity", pool, str(cache)
    return reward_config(c)


def _read(p):
    return [json.loads(l) for l in open(p)]


def test_augment_writes_k_plus_one_rows_with_rewards_and_original(demo, tmp_path):
    k, n = 3, 5
    stats = A.augment(demo["train"], tmp_path / "aug", Sampler(), k,
                      _reward_cfg(demo["candidates"], tmp_path / "cache"), limit=n, tau=0.3)
    rows = _read(tmp_path / "aug" / A.SCORED)
    assert len(rows) == n * (k + 1) == stats["rows"]
    by_src = {}
    for r in rows:
        by_src.setdefault(r["source_id"], []).append(r)
        assert isinstance(r["reward"], float) and isinstance(r["original"], str)
    assert len(by_src) == n and all(len(v) == k + 1 for v in by_src.values())
    for group in by_src.values():
        assert [r["kind"] for r in group] == ["original"] + ["rewrite"] * k
        assert all(r["original"] == group[0]["text"] for r in group)
        assert len({r["text"] for r in group}) == k + 1
    # the rewards are the training reward of each text (the diversity scorer, here)
    from fairjax.rewards.registry import build_reward_scorer

    scorer = build_reward_scorer(_reward_cfg(demo["candidates"], tmp_path / "c2"), strict=False)
    np.testing.assert_allclose([r["reward"] for r in rows],
                               scorer.score_texts([r["text"] for r in rows]), rtol=1e-6)
    assert stats["reward"]["rewrite"]["n"] == n * k and stats["reward"]["original"]["n"] == n
    # cached like every training reward: a second build of the same rows scores nothing new
    from fairjax.rewards.precompute import build_rewards
    from fairjax.data.jobs import read_records
    from fairjax.rewards.registry import reward_spec

    cache = stats["reward"]["cache"]
    lines = open(cache).read()
    aug = str(tmp_path / "aug" / A.AUGMENTED)
    again, _ = build_rewards(aug, read_records(aug), _Fail(), reward_spec(
        _reward_cfg(demo["candidates"], tmp_path / "cache")), str(tmp_path / "cache"), progress=False)
    assert open(cache).read() == lines
    np.testing.assert_allclose(again, [r["reward"] for r in rows])
    # a rewrite row is an episode of its original's prompt
    ds = JobsDataset.from_file(aug)
    orig = rows[1]["original"]
    assert ds[1].response == rows[1]["text"]
    assert ds[1].prompt == build_prompt(orig, **extract_fields(orig)) == ds[0].prompt


class _Fail:
    name = "must-not-run"

    def score_texts(self, texts):
        raise AssertionError("scored again instead of read from the cache")


def test_dpo_pairs_best_and_worst_faithful():
    post = "Acme | Engineer | Berlin\nBuild things."
    rows = [{"source_id": "a", "original": post, "text": t, "kind": k, "company": "Acme"}
            for t, k in ((post, "original"), ("generic", "rewrite"), ("good", "rewrite"),
                         ("fine", "rewrite"))]
    rows += [{"source_id": "b", "original": "B", "text": t, "kind": "rewrite"} for t in ("x", "y")]
    rewards = np.array([1.0, 9.0, 3.0, 2.0, 5.0, 6.0])
    faithful = np.array([True, False, True, True, True, False])
    pairs = A.dpo_pairs(rows, rewards, faithful)
    assert len(pairs) == 1  # b has one faithful response: no pair
    p = pairs[0]
    assert (p["chosen"], p["rejected"], p["margin"]) == ("good", post, 2.0)
    assert p["prompt"].startswith("Original job description for reference: 'Acme | Engineer")
    assert A.dpo_pairs(rows, rewards, faithful, min_margin=2.0) == []


def test_augmented_pairs_file_feeds_dpo(demo, tmp_path):
    from fairjax.data.pairs import read_pairs

    stats = A.augment(demo["train"], tmp_path / "aug", Sampler(), 2,
                      _reward_cfg(demo["candidates"], tmp_path / "cache"), limit=6, tau=0.0,
                      require_header=False)
    scored = _read(tmp_path / "aug" / A.SCORED)
    pairs = read_pairs(tmp_path / "aug" / A.PAIRS)
    assert len(pairs) == stats["pairs"] > 0
    for p in pairs:  # chosen = the group's best reward, rejected = its worst (all faithful here)
        group = [r for r in scored if r["original"] in p.prompt]
        best = max(group, key=lambda r: r["reward"])
        worst = min(group, key=lambda r: r["reward"])
        assert (p.chosen, p.rejected) == (best["text"], worst["text"])


@pytest.mark.slow
def test_rest_two_rounds_on_the_demo(tmp_path):
    from fairjax import rest

    cfg = load_config("rest")
    cfg.unlock()
    set_dotted(cfg, {"train.steps": 3, "train.log_every": 1, "train.eval_every": 3,
                     "train.save_every": 3, "train.eval_batches": 1, "train.progress": False,
                     "train.tensorboard": False, "train.async_checkpoint": False,
                     "optim.warmup_steps": 1, "optim.batch_size": 4, "data.max_len": 128,
                     "data.buckets": (64, 128), "data.demo_postings": 40, "rest.rounds": 2,
                     "rest.k": 2, "rest.limit": 8, "rest.batch_size": 8,
                     "reward.cache_dir": str(tmp_path / "cache")})
    cfg.lock()
    s = rest.run(cfg, str(tmp_path / "run"))
    assert [r["round"] for r in s["rounds"]] == [0, 1]
    assert s["rounds"][0]["sampler"] == "lexicon_swap"
    assert s["rounds"][1]["sampler"] == str(tmp_path / "run" / "round_0" / "train")
    for r in (0, 1):
        d = tmp_path / "run" / f"round_{r}"
        st = json.loads((d / "data" / A.STATS).read_text())
        assert st["postings"] == 8 and st["reward"]["rewrite"]["n"] >= 1
        assert (d / "train" / "config.json").is_file() and s["rounds"][r]["steps"] == 3
    saved = json.loads((tmp_path / "run" / "round_1" / "train" / "config.json").read_text())
    assert saved["init"]["policy"] == str(tmp_path / "run" / "round_0" / "train")
    assert (tmp_path / "run" / rest.SUMMARY).is_file()
