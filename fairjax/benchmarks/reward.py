"""Reward / fairness throughput: `python -m fairjax.bench reward [--batch=10000]`.

N synthetic job texts x N synthetic candidate profiles (default N = 10,000; `--batch` sets N), the
hashing TF-IDF embedder, then the full diversity reward (chunked cosine matmul, exact top-50,
gender + region shares, distances, selection rates and impact ratios with top-10 selection).
Timed end to end and by stage: pool fit+embed, text embed, matching (+ shares + impact ratios).
Texts are ~150 words drawn from a Zipf-distributed 5,000-word vocabulary (deterministic seed);
candidates get random gender (2 groups) and region (8 groups) labels. numpy only (no jax).
"""
from __future__ import annotations

import json
import time

import numpy as np

from fairjax.rewards.diversity import DiversityConfig, DiversityScorer
from fairjax.rewards.embedders import HashingTfidfEmbedder
from fairjax.rewards.pool import GENDERS, REGIONS, CandidatePool

DEFAULT_N, WORDS_PER_TEXT, VOCAB = 10_000, 150, 5_000


def synthetic_texts(n: int, seed: int) -> list[str]:
    """n deterministic texts of WORDS_PER_TEXT Zipf-distributed words."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(VOCAB)])
    p = 1.0 / np.arange(1, VOCAB + 1)
    ids = rng.choice(VOCAB, size=(n, WORDS_PER_TEXT), p=p / p.sum())
    return [" ".join(row) for row in vocab[ids]]


def run(FLAGS) -> dict:
    n = int(getattr(FLAGS, "batch", None) or DEFAULT_N)
    rng = np.random.default_rng(0)
    texts, cands = synthetic_texts(n, 1), synthetic_texts(n, 2)
    pool = CandidatePool(texts=cands, ids=[str(i) for i in range(n)],
                         gender=rng.choice(GENDERS, n).astype(object),
                         region=rng.choice(REGIONS, n).astype(object))
    emb = HashingTfidfEmbedder()
    t0 = time.perf_counter()
    scorer = DiversityScorer(pool, emb, DiversityConfig())  # fits idf + embeds the pool once
    t1 = time.perf_counter()
    text_emb = emb.embed(texts)
    t2 = time.perf_counter()
    res = scorer.evaluate(texts, embeddings=text_emb)
    t3 = time.perf_counter()
    result = {
        "n_texts": n, "n_candidates": n, "embedder": emb.id, "k": 50, "select_k": 10,
        "seconds": {"pool_fit_embed": t1 - t0, "text_embed": t2 - t1,
                    "match_shares_impact_ratios": t3 - t2, "total": t3 - t0},
        "mean_reward": float(res.reward.mean()),
        "mean_ir_female": float(np.nanmean(res.rates["gender"]["ir_female"])),
    }
    s = result["seconds"]
    print(f"reward benchmark: {n:,} texts x {n:,} candidates, hashing embedder "
          f"(D={emb.n_features}), k=50, select 10, gender + region")
    for stage, sec in s.items():
        print(f"  {stage:<28} {sec:7.2f} s")
    print(f"  mean reward {result['mean_reward']:.2f}, mean IR(female) {result['mean_ir_female']:.3f}")
    if getattr(FLAGS, "json", None):
        with open(FLAGS.json, "w") as f:
            json.dump(result, f, indent=2)
    return result
