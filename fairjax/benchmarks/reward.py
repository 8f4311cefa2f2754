"""Reward / fairness throughput: `python -m fairjax.bench reward [--embedders=...] [--batch=N]`.

Real data (the default when the files exist, `run_real`): the postings of `--texts` (default the
hn_jobs eval split, 772 postings) matched against the candidates of `--pools` (default bios +
tech_bios, 5,532 profiles), for each embedder of `--embedders` (default tfidf, all-minilm-l6-v2,
all-mpnet-base-v2; any `fairjax.rewards.embedders.make_embedder` name): load (+ jit compilation
of the padded lengths on a few texts), pool embedding, posting embedding, then the diversity
reward's matching (cosine top-50, shares, impact ratios) on those vectors, each timed. `NAME@N`
embeds only N evenly spaced postings and N candidates and extrapolates the embedding times linearly
to the full counts (said in the output, `extrapolated: true`); the matching then runs on random
unit vectors of the encoder's dimension (its cost depends on the dimension only).

Synthetic (`--batch=N`, or when the data files are absent): N synthetic job texts x N synthetic
candidate profiles (default N = 10,000), the hashing TF-IDF embedder, then the full diversity reward (chunked cosine matmul, exact top-50,
gender + region shares, distances, selection rates and impact ratios with top-10 selection).
Timed end to end and by stage: pool fit+embed, text embed, matching (+ shares + impact ratios).
Texts are ~150 words drawn from a Zipf-distributed 5,000-word vocabulary (deterministic seed);
candidates get random gender (2 groups) and region (8 groups) labels. numpy only (no jax).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from fairjax.data.jobs import read_records
from fairjax.rewards.diversity import DiversityConfig, DiversityScorer
from fairjax.rewards.embedders import HashingTfidfEmbedder, make_embedder
from fairjax.rewards.pool import GENDERS, REGIONS, CandidatePool, load_pool

DEFAULT_N, WORDS_PER_TEXT, VOCAB = 10_000, 150, 5_000


def synthetic_texts(n: int, seed: int) -> list[str]:
    """n deterministic texts of WORDS_PER_TEXT Zipf-distributed words."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(VOCAB)])
    p = 1.0 / np.arange(1, VOCAB + 1)
    ids = rng.choice(VOCAB, size=(n, WORDS_PER_TEXT), p=p / p.sum())
    return [" ".join(row) for row in vocab[ids]]


_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DEFAULT_TEXTS = str(_DATA / "hn_jobs" / "eval.jsonl")
DEFAULT_POOLS = f"{_DATA / 'bios' / 'bios.jsonl'},{_DATA / 'tech_bios' / 'bios.jsonl'}"
DEFAULT_EMBEDDERS = "tfidf,all-minilm-l6-v2,all-mpnet-base-v2"


class _RandomUnit:
    """Stand-in embedder for the matching of an extrapolated run: random unit rows [N, dim]."""

    def __init__(self, dim: int):
        self.dim, self.id = dim, f"random-unit-{dim}"
        self.rng = np.random.default_rng(0)

    def embed(self, texts):
        x = self.rng.standard_normal((len(texts), self.dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def _one_embedder(spec: str, texts: list[str], pool, dcfg) -> dict:
    name, _, lim = spec.partition("@")
    limit = int(lim) if lim else None
    t0 = time.perf_counter()
    emb = make_embedder(name)
    if not isinstance(emb, HashingTfidfEmbedder):
        emb.encode(texts[:2])  # compiles the smallest padded length(s)
    t_load = time.perf_counter() - t0
    n_t, n_c = len(texts), len(pool)
    if limit is None:
        t0 = time.perf_counter()
        scorer = DiversityScorer(pool, emb, dcfg)  # embeds the pool (tfidf: fits idf too)
        t_pool = time.perf_counter() - t0
        t0 = time.perf_counter()
        text_emb = emb.embed(texts)
        t_text = time.perf_counter() - t0
    else:
        pick = lambda xs: [xs[i] for i in np.unique(np.linspace(0, len(xs) - 1, min(limit, len(xs))).astype(int))]  # noqa: E731
        sub_t, sub_c = pick(texts), pick(pool.texts)  # evenly spaced: every source file's share
        t0 = time.perf_counter()
        emb.encode(sub_c)
        t_pool = (time.perf_counter() - t0) * n_c / len(sub_c)
        t0 = time.perf_counter()
        vec = emb.encode(sub_t)
        t_text = (time.perf_counter() - t0) * n_t / len(sub_t)
        stand_in = _RandomUnit(vec.shape[1])
        scorer = DiversityScorer(pool, stand_in, dcfg)
        text_emb = stand_in.embed(texts)
    t0 = time.perf_counter()
    res = scorer.evaluate(texts, embeddings=text_emb)
    t_match = time.perf_counter() - t0
    out = {"embedder": name, "id": emb.id, "dim": int(text_emb.shape[1]),
           "extrapolated": limit is not None,
           "seconds": {"load_compile": t_load, "pool_embed": t_pool, "text_embed": t_text,
                       "match_shares_impact_ratios": t_match,
                       "embed_and_match": t_pool + t_text + t_match}}
    if limit is not None:
        out["embedded_subset"] = {"texts": len(sub_t), "candidates": len(sub_c)}
    else:
        out["mean_reward"] = float(res.reward.mean())
    return out


def run_real(FLAGS) -> dict:
    """The real-data benchmark (module docstring)."""
    texts_path = getattr(FLAGS, "texts", None) or DEFAULT_TEXTS
    pools = [p for p in (getattr(FLAGS, "pools", None) or DEFAULT_POOLS).split(",") if p]
    specs = [e.strip() for e in (getattr(FLAGS, "embedders", None) or DEFAULT_EMBEDDERS).split(",")
             if e.strip()]
    texts = [r["text"] for r in read_records(texts_path, clean=False)]
    pool = CandidatePool.concat([load_pool(p) for p in pools])
    dcfg = DiversityConfig()
    print(f"reward benchmark: {len(texts):,} postings ({texts_path}) x {len(pool):,} candidates "
          f"({', '.join(pools)}), k=50, select 10; load = model load + first jit compilation")
    rows = []
    for spec in specs:
        r = _one_embedder(spec, texts, pool, dcfg)
        rows.append(r)
        s = r["seconds"]
        note = (f"  [embedded {r['embedded_subset']['texts']} + {r['embedded_subset']['candidates']}"
                " texts, extrapolated]" if r["extrapolated"] else "")
        print(f"  {r['embedder']:<20} D={r['dim']:<5} load {s['load_compile']:7.1f} s  pool "
              f"{s['pool_embed']:8.1f} s  postings {s['text_embed']:7.1f} s  match "
              f"{s['match_shares_impact_ratios']:5.2f} s  embed+match {s['embed_and_match']:8.1f} s{note}",
              flush=True)
    result = {"n_texts": len(texts), "n_candidates": len(pool), "texts": texts_path, "pools": pools,
              "k": 50, "select_k": 10, "embedders": rows}
    if getattr(FLAGS, "json", None):
        with open(FLAGS.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


def run(FLAGS) -> dict:
    real = getattr(FLAGS, "texts", None) or (os.path.isfile(DEFAULT_TEXTS) and all(
        os.path.isfile(p) for p in DEFAULT_POOLS.split(",")))
    if real and not getattr(FLAGS, "batch", None):
        return run_real(FLAGS)
    return run_synthetic(FLAGS)


def run_synthetic(FLAGS) -> dict:
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
