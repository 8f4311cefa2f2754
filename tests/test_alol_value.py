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
    from fairjax.models import load

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
