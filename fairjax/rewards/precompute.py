"""Offline reward precomputation: score a dataset once, cache by text hash, reuse as training reward.

FMs-at-work trains on a precomputed `q_value` column (reference §4.3); this is the same idea for any
`Scorer`. The cache is a JSONL file of `{"hash": sha1(text), "scorer": scorer.name, "reward": x}`
lines (append-only, so an interrupted run keeps what it finished); lines of another scorer are kept
but ignored. `annotate_jsonl` writes a copy of a dataset JSONL with a `reward` field, which the job
data pipeline reads as the optional per-example reward.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from fairjax.rewards.base import Scorer
from fairjax.rewards.embedders import text_hash


def _read_cache(path: Path, scorer_name: str) -> dict[str, float]:
    cache: dict[str, float] = {}
    if not path.is_file():
        return cache
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if rec["scorer"] == scorer_name:
                    cache[rec["hash"]] = float("nan") if rec["reward"] is None else float(rec["reward"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path}:{n}: bad reward-cache line ({e}); expected "
                                 '{"hash": str, "scorer": str, "reward": float}') from e
    return cache


def precompute_rewards(texts: Sequence[str], scorer: Scorer,
                       cache_path: Optional[str | os.PathLike] = None, batch_size: int = 512,
                       progress: bool = True) -> np.ndarray:
    """Scores [N] float64 for `texts`; only texts missing from the cache are scored (in batches)."""
    cache: dict[str, float] = {}
    path = None if cache_path is None else Path(cache_path)
    if path is not None:
        cache = _read_cache(path, scorer.name)
        path.parent.mkdir(parents=True, exist_ok=True)
    keys = [text_hash(t) for t in texts]
    todo: dict[str, str] = {}
    for k, t in zip(keys, texts):
        if k not in cache and k not in todo:
            todo[k] = t
    items = list(todo.items())
    bar = tqdm(total=len(items), desc=f"scoring ({scorer.name})", unit="text", disable=not progress)
    out = open(path, "a", encoding="utf-8") if path is not None else None
    try:
        for s in range(0, len(items), batch_size):
            chunk = items[s:s + batch_size]
            vals = np.asarray(scorer.score_texts([t for _, t in chunk]), np.float64)
            if vals.shape != (len(chunk),):
                raise ValueError(f"scorer {scorer.name!r} returned shape {vals.shape} for {len(chunk)} texts")
            for (k, _), v in zip(chunk, vals):
                cache[k] = float(v)
                if out is not None:
                    out.write(json.dumps({"hash": k, "scorer": scorer.name,
                                          "reward": None if math.isnan(v) else float(v)}) + "\n")
            if out is not None:
                out.flush()
            bar.update(len(chunk))
    finally:
        bar.close()
        if out is not None:
            out.close()
    return np.array([cache[k] for k in keys], np.float64)


def annotate_jsonl(in_path: str | os.PathLike, out_path: str | os.PathLike, scorer: Scorer,
                   text_field: str = "text", reward_field: str = "reward",
                   cache_path: Optional[str | os.PathLike] = None, progress: bool = True,
                   limit: Optional[int] = None) -> int:
    """Copy a JSONL dataset adding `reward_field` = scorer(text); returns the number of rows.

    `limit`: copy and score only the first `limit` records. Bad lines (invalid JSON, non-object,
    missing/non-string text) raise ValueError with file:line. Refuses to overwrite the input file.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    if in_path.resolve() == out_path.resolve():
        raise ValueError(f"{out_path}: refusing to overwrite the input file")
    rows = []
    with open(in_path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{in_path}:{n}: invalid JSON ({e.msg})") from e
            if not isinstance(rec, dict) or not isinstance(rec.get(text_field), str):
                raise ValueError(f"{in_path}:{n}: expected an object with a string {text_field!r} field")
            rows.append(rec)
    if not rows:
        raise ValueError(f"{in_path}: no records (the file is empty); expected one JSON object "
                         f"with a string {text_field!r} field per line")
    rewards = precompute_rewards([r[text_field] for r in rows], scorer, cache_path, progress=progress)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for rec, r in zip(rows, rewards):
            rec[reward_field] = None if math.isnan(r) else float(r)
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, out_path)
    return len(rows)
