"""A-LoL's learned V(x): fit on the frozen reference's prompt states, then A = R − V(x)."""
from pathlib import Path

import numpy as np
import pytest

from fairjax.agents.alol import compute_advantages
from fairjax.agents.alol_value import fit_reference_values
from fairjax.data.jobs import JobExample, JobsDataset
from fairjax.data.layout import Truncation
from fairjax.data.task import JobRewriteTask


@pytest.mark.slow  # ~25 s on 2 CPU cores (jit of the head fit)
def test_value_head_learns_a_prompt_dependent_reward(fixtures_dir):
    from fairjax.io.loader import load

    module, params, tok = load(str(Path(fixtures_dir) / "gpt2_tiny" / "hf"))
    rng = np.random.default_rng(0)
    good = rng.random(32) < 0.5  # the reward depends on the prompt only: V(x) can explain it
    ds = JobsDataset([JobExample(f"e{i}", ("excellent fair posting " if g else "bad old text ") * 3,
                                 "a rewrite", 1.0 if g else -1.0) for i, g in enumerate(good)])
    eps = JobRewriteTask(ds).episodes(tok, Truncation(max_len=64)).prepare()
    eps = [eps[i] for i in range(len(eps))]
    values, head, info = fit_reference_values(module, params, eps, tok.pad_id, steps=120, lr=5e-3,
                                              batch_size=16, seed=0)
    assert values.shape == (32,) and info["n_fit"] == 32
    assert info["explained_variance"] > 0.8, info  # constant baseline: 0
    assert np.all(np.sign(values) == np.where(good, 1, -1))
    adv = compute_advantages(values, np.where(good, 1.0, -1.0))
    assert np.abs(adv).mean() < 0.5  # R − V(x) is centred per prompt, R − mean R would be ±1


@pytest.mark.slow  # ~1-2 min on 2 CPU cores: BC warm start + V(x) fit + A-LoL steps
def test_alol_trains_end_to_end_with_a_fitted_value_baseline(tmp_path):
    """`python -m fairjax.train --config=configs/alol.py`: BC warm start, V(x) fit on the frozen BC
    reference over the train rewards (diversity, minmax), A = R − V(x) in the batches."""
    import json
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    run = tmp_path / "alol"
    res = subprocess.run(
        [sys.executable, "-m", "fairjax.train", "--config=configs/alol.py", f"--config.run_dir={run}",
         "--config.train.steps=2", "--config.pipeline.bc_steps=2", "--config.alol.value_steps=40",
         "--config.data.demo_postings=60", "--config.train.progress=False",
         "--config.data.max_len=128", "--config.data.buckets=(64,128)",
         "--config.train.tensorboard=False", f"--config.reward.cache_dir={tmp_path / 'cache'}",
         "--config.reward.embedder=tfidf"],
        cwd=repo, env=dict(os.environ, PYTHONPATH=str(repo)), capture_output=True, text=True,
        timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "[alol] baseline value_head" in res.stdout
    info = json.loads((run / "alol_value.json").read_text())
    train = [json.loads(x) for x in open(run / "data" / "rewarded" / "train.jsonl")]
    assert info["baseline"] == "value_head" and info["n_fit"] == len(train)
    assert info["value_std"] > 0  # V depends on the posting, unlike the constant baseline
    r = np.array([t["reward"] for t in train])  # minmax-normalised diversity reward
    assert r.min() == 0.0 and r.max() == 1.0
    assert info["advantage_mean"] == pytest.approx(r.mean() - info["value_mean"], abs=1e-4)
    spec = json.loads((run / "reward_spec.json").read_text())
    assert spec["scorer"] == "diversity" and spec["normalize"] == "minmax"
    assert (run / "bc" / "reward_spec.json").is_file()  # the BC warm start: trained on no reward
    assert json.loads((run / "bc" / "reward_spec.json").read_text())["scorer"] == "none"


def test_advantages_in_the_batches():
    from fairjax.agents.alol import train_advantages, with_advantage
    from trainer_fixtures import small_config

    class Ep:
        def __init__(self, r):
            self.sequence_reward = r

    eps = [Ep(r) for r in (0.0, 1.0, 2.0)]
    cfg = small_config("alol", **{"alol.baseline": "mean", "alol.reward_transform": "sigmoid"})
    adv, info = train_advantages(cfg, eps, 0, None)
    sig = 1 / (1 + np.exp(-np.array([0.0, 1.0, 2.0])))
    np.testing.assert_allclose(adv, sig - sig.mean(), rtol=1e-5)  # reward_transform honoured
    fn = with_advantage(lambda items, **kw: {"sequence_reward": np.array(
        [e.sequence_reward for e in items] + [0.0])}, {id(e): float(a) for e, a in zip(eps, adv)},
        "sigmoid", info["value_mean"])
    b = fn(eps[:2] + [Ep(3.0)])  # an eval episode: transform(R) − mean V; then one padding row
    np.testing.assert_allclose(b["advantage"], [adv[0], adv[1], 1 / (1 + np.exp(-3.0)) - sig.mean(), 0.0],
                               rtol=1e-5)
    with pytest.raises(Exception, match="baseline='value_head' needs the reference"):
        train_advantages(small_config("alol"), eps, 0, None)


def test_prompt_states_run_on_prompts_alone_and_equal_full_episodes(fixtures_dir):
    """V(x)'s inputs are computed on each prompt's own positions (sorted, block-padded widths,
    few compilations): equal to the reference's states over the whole padded episode."""
    import jax

    from fairjax.agents import alol_value
    from fairjax.agents.alol import prompt_hidden_states
    from fairjax.data.layout import collate
    from fairjax.io.loader import load

    module, params, tok = load(str(Path(fixtures_dir) / "gpt2_tiny" / "hf"))
    rng = np.random.default_rng(1)
    words = ["fair", "posting", "remote", "python", "team", "salary", "growth"]
    ds = JobsDataset([JobExample(f"e{i}", " ".join(rng.choice(words, size=int(rng.integers(2, 40)))),
                                 " ".join(rng.choice(words, size=int(rng.integers(1, 20)))), 0.0)
                      for i in range(11)])
    eps = JobRewriteTask(ds).episodes(tok, Truncation(max_len=128)).prepare()
    eps = [eps[i] for i in range(len(eps))]
    width = max(int(e.action_idxs[0]) + 1 for e in eps)
    old_block = alol_value.PROMPT_BLOCK
    alol_value.PROMPT_BLOCK = 8  # several widths among these short prompts
    try:
        h, m = alol_value._prompt_states(module, params, eps, tok.pad_id, 4, width)
    finally:
        alol_value.PROMPT_BLOCK = old_block
    full = collate(eps, tok.pad_id, extras=True)
    hf, mf = jax.device_get(prompt_hidden_states(module, params, full))
    np.testing.assert_array_equal(m, np.asarray(mf)[:, :width])
    np.testing.assert_allclose(h * m[..., None], np.asarray(hf)[:, :width] * m[..., None],
                               atol=2e-5, rtol=1e-5)
