"""`python -m fairjax.score --annotate=OUT`: the input records plus the diversity reward."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def test_annotate_matches_scorer(tmp_path):
    from fairjax.data.demo import write_demo
    from fairjax.rewards.diversity import DiversityScorer
    from fairjax.rewards.embedders import HashingTfidfEmbedder
    from fairjax.rewards.pool import load_pool

    paths = write_demo(tmp_path / "d", n_postings=30, n_candidates=120, with_rewards=False)
    out = tmp_path / "scored.jsonl"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "fairjax.score", f"--texts={paths['train']}",
                           f"--pool={paths['candidates']}", f"--annotate={out}", "--cache_dir=", "--embedder=tfidf"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    src = [json.loads(l) for l in open(paths["train"])]
    got = [json.loads(l) for l in open(out)]
    assert [g["id"] for g in got] == [s["id"] for s in src]
    expect = DiversityScorer(load_pool(paths["candidates"]), HashingTfidfEmbedder(n_features=4096)).score_texts(
        [s["text"] for s in src])
    np.testing.assert_allclose([g["reward"] for g in got], expect, rtol=1e-9)


def test_annotate_honours_limit_and_reports(tmp_path):
    from fairjax.data.demo import write_demo

    paths = write_demo(tmp_path / "d", n_postings=30, n_candidates=120, with_rewards=False)
    out = tmp_path / "scored.jsonl"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "fairjax.score", f"--texts={paths['train']}",
                           f"--pool={paths['candidates']}", f"--annotate={out}", "--cache_dir=", "--embedder=tfidf",
                           "--limit=5"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = [json.loads(l) for l in open(out)]
    src = [json.loads(l) for l in open(paths["train"])]
    assert len(src) > 5 and [g["id"] for g in got] == [s["id"] for s in src[:5]]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith(f"annotated 5 records of {paths['train']} (--limit=5) -> {out}: "
                           "reward mean"), proc.stdout
