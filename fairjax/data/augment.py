"""Rewrite-augmented training data: the same job written several ways, each with its reward.

`augment(train_path, out_dir, rewriter, k, reward, ...)` reads the train postings and writes,
into `out_dir`:

* `augmented.jsonl`: per posting, the posting itself (`kind: "original"`) and `k` rewrites from
  `rewriter` (`kind: "rewrite"`, `policy`: the rewriter's name; anything with `.name` and
  `.rewrite(texts) -> texts`: a policy sampled on the job prompt, the prompted instruct model, the
  lexicon swap; `rewrite` is called k times, so a deterministic rewriter gives k equal rows, use
  k = 1 for it). Every row carries `original` (the posting's text), the posting's header fields
  and `source_id`; ids are `<id>` and `<id>~r<j>`. The job layout builds a row's prompt from
  `original` (`jobs.make_example`), so ILQL, A-LoL and PHF read the rewrites as extra episodes of
  the same prompt. Empty rewrites cannot be a record and are dropped (counted in the stats).
  The file holds no `reward`: train on it with `reward.scorer` (and `reward.pool`) set as here and
  the reward build (`rewards.training.prepare_rewards`) finds every reward in its cache.
* `scored.jsonl`: the same rows with `reward` = the training reward (`reward`, the run config's
  `reward` block as a `rewards.registry.RewardConfig`; a scorer that needs the original gets the row's `original`), computed
  by the cached reward build (`rewards.precompute.build_rewards`, `reward.cache_dir`).
* `pairs.jsonl`: DPO pairs `{prompt, chosen, rejected, margin}` per posting, the best and the
  worst FAITHFUL response by reward (`eval.preservation.Faithfulness`: cosine ≥ τ under the
  reward's embedder and the header kept; the original counts as a faithful response); postings
  with fewer than two distinct faithful responses or a margin ≤ `min_margin` give none.
* `stats.json`: rows, drops, and reward mean/std/min/max per kind, faithful share of the
  rewrites, pairs made.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from fairjax.data.jobs import DataError, make_example, read_records
from fairjax.eval.preservation import Faithfulness, best_faithful, worst_faithful
from fairjax.rewards.embedders import HashingTfidfEmbedder
from fairjax.rewards.precompute import build_rewards
from fairjax.rewards.registry import build_reward_scorer, reward_spec
from fairjax.rewards.training import reward_cache_dir

if TYPE_CHECKING:
    from fairjax.rewards.registry import RewardConfig

AUGMENTED, SCORED, PAIRS, STATS = "augmented.jsonl", "scored.jsonl", "pairs.jsonl", "stats.json"
HEADER_KEYS = ("company", "location", "title", "technologies")


def augmented_rows(records: Sequence[dict], rewrites: Sequence[Sequence[str]], policy: str
                   ) -> tuple[list[dict], int]:
    """(rows, empty rewrites dropped): records [N] (canonical, `jobs.read_records`), rewrites
    [k][N] -> per record the original row then its non-empty rewrites."""
    rows, dropped = [], 0
    for i, rec in enumerate(records):
        head = {k: rec[k] for k in HEADER_KEYS if rec.get(k)}
        base = {"source_id": rec["id"], "original": rec["text"], **head}
        rows.append({"id": rec["id"], "text": rec["text"], "kind": "original", **base})
        for j, rw in enumerate(r[i] for r in rewrites):
            if not isinstance(rw, str) or not rw.strip():
                dropped += 1
                continue
            rows.append({"id": f"{rec['id']}~r{j}", "text": rw, "kind": "rewrite", "policy": policy,
                         **base})
    return rows, dropped


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    os.replace(tmp, path)


def _stats(x: np.ndarray) -> dict:
    x = np.asarray(x, np.float64)
    if not x.size:
        return {"n": 0}
    return {"n": int(x.size), "mean": float(x.mean()), "std": float(x.std()),
            "min": float(x.min()), "max": float(x.max())}


def dpo_pairs(rows: Sequence[dict], rewards: np.ndarray, faithful: np.ndarray,
              min_margin: float = 0.0) -> list[dict]:
    """Per source posting (rows grouped by `source_id`), the best and worst faithful response by
    reward as {prompt, chosen, rejected, margin} (module docstring)."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r["source_id"], []).append(i)
    out = []
    for idx in groups.values():
        r, f = rewards[idx][None, :], faithful[idx][None, :]
        (hi,), (ok,) = best_faithful(r, f)
        (lo,), _ = worst_faithful(r, f)
        chosen, rejected = rows[idx[hi]], rows[idx[lo]]
        margin = float(r[0, hi] - r[0, lo])
        if not ok or chosen["text"] == rejected["text"] or not margin > min_margin:
            continue
        first = rows[idx[0]]
        rec = {"id": first["source_id"], "text": first["original"],
               "extra": {}, **{k: first.get(k) for k in HEADER_KEYS}}
        out.append({"prompt": make_example(rec).prompt, "chosen": chosen["text"],
                    "rejected": rejected["text"], "margin": margin})
    return out


def augment(train_path: str | os.PathLike, out_dir: str | os.PathLike, rewriter: Any, k: int,
            reward: RewardConfig, *, default_pool: Optional[str] = None, tau: float = 0.8,
            require_header: bool = True, min_margin: float = 0.0, limit: int = 0,
            text_field: str = "text", progress: bool = False) -> dict:
    """Write the augmented data of `train_path` into `out_dir` (module docstring); returns the
    stats (also in stats.json)."""
    if k < 1:
        raise ValueError(f"augment: k={k}; expected >= 1 rewrites per posting")
    if not reward.scorer:
        raise ValueError("augment: reward.scorer is empty; name the training reward to score "
                         "the rewrites with (e.g. constrained or diversity)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = read_records(train_path, text_field=text_field)[: limit or None]
    if not records:
        raise DataError(f"{train_path}: no postings to augment")
    texts = [r["text"] for r in records]
    rewrites = [rewriter.rewrite(texts) for _ in range(k)]
    rows, dropped = augmented_rows(records, rewrites, rewriter.name)
    path = out / AUGMENTED
    _write_jsonl(path, rows)

    cache_dir = reward_cache_dir(reward)
    spec = reward_spec(reward, default_pool)
    # strict=False: a rewrite that matches no labelled candidate gets the scorer's floor instead
    # of stopping the build (sampled text may be anything)
    scorer = build_reward_scorer(reward, default_pool, cache_dir=os.path.join(cache_dir, "pools"),
                                 strict=False)
    recs = read_records(path, text_field="text")
    rewards, cache = build_rewards(path, recs, scorer, spec, cache_dir, progress=progress)
    _write_jsonl(out / SCORED, [{**r, "reward": float(x)} for r, x in zip(rows, rewards)])

    embedder = getattr(scorer, "embedder", None)
    if embedder is None:
        embedder = HashingTfidfEmbedder(n_features=4096)
    faith = Faithfulness(embedder, tau, require_header)
    head = [{k: r.get(k) for k in HEADER_KEYS} for r in rows]
    faithful, cos = faith([r["original"] for r in rows], [r["text"] for r in rows], head)
    is_orig = np.array([r["kind"] == "original" for r in rows])
    faithful = faithful | is_orig
    pairs = dpo_pairs(rows, rewards, faithful, min_margin)
    _write_jsonl(out / PAIRS, pairs)
    stats = {"train": os.path.abspath(train_path), "policy": rewriter.name, "k": k,
             "postings": len(records), "rows": len(rows), "empty_rewrites_dropped": dropped,
             "reward": {"scorer": spec.get("scorer"), "cache": str(cache),
                        "original": _stats(rewards[is_orig]), "rewrite": _stats(rewards[~is_orig])},
             "rewrite_faithful_share": float(faithful[~is_orig].mean()) if (~is_orig).any() else None,
             "rewrite_cosine_mean": float(np.nanmean(cos[~is_orig])) if (~is_orig).any() else None,
             "tau": tau, "require_header": require_header, "pairs": len(pairs),
             "files": {n: str(out / n) for n in (AUGMENTED, SCORED, PAIRS)}}
    with open(out / STATS, "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=1)
        f.write("\n")
    return stats
