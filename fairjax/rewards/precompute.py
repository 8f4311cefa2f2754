"""Offline reward precomputation: score a dataset once, cache it, reuse it as the training reward.

`build_rewards` (the training data build): scores every record of one data file with a progress bar
and caches the rewards in CACHE_DIR/<file stem>.<data sha256[:16]>.<scorer spec sha256[:16]>.jsonl,
keyed by (data file hash, scorer config hash, `registry.spec_hash`). The first line is a header
naming the data file, both hashes and the spec; then one `{"line", "id", "reward"}` line per record,
appended and flushed a batch at a time, so an interrupted or failed build keeps what it finished and a
second run scores only the rest. A cache file whose header names another data file hash or scorer
spec is refused with both named (never reused silently). A scorer failure (exception, NaN, or a
`ScorerFailure` such as an empty candidate match) stops the build with `RewardBuildError` naming the
file, line and record id.

`precompute_rewards` / `annotate_jsonl` (lists of texts, the `score --annotate` CLI):

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

from fairjax.errors import ConfigError
from fairjax.rewards.base import Scorer, ScorerFailure
from fairjax.rewards.embedders import text_hash
from fairjax.rewards.registry import file_sha256, spec_hash


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


# ----------------------------------------------------------------------------- data build
CACHE_FORMAT = "fairjax.reward_cache.v1"


class RewardBuildError(ValueError):
    """The reward data build stopped; the message names file:line, the record id and the fix."""


def reward_cache_path(cache_dir: str | os.PathLike, data_path: str | os.PathLike, data_sha: str,
                      scorer_sha: str) -> Path:
    return Path(cache_dir) / f"{Path(data_path).stem}.{data_sha[:16]}.{scorer_sha[:16]}.rewards.jsonl"


def _read_build_cache(path: Path, header: dict) -> dict[int, tuple[str, float]]:
    """{line: (id, reward)} of a build cache; refuses a header for another data file or scorer."""
    done: dict[int, tuple[str, float]] = {}
    if not path.is_file():
        return done
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for n, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):  # a line cut by a crash: drop it, it will be scored again
                break
            raise RewardBuildError(f"{path}:{n}: corrupt reward-cache line; delete the file to rebuild")
        if n == 1:
            for key in ("format", "data_sha256", "scorer_sha256"):
                if rec.get(key) != header[key]:
                    raise RewardBuildError(
                        f"{path}:1: reward cache built with {key}={rec.get(key)!r}, this build has "
                        f"{header[key]!r} (data {header['data_file']}, scorer {header['spec']}); it "
                        "is not reused: delete it or point reward.cache_dir elsewhere")
            continue
        done[int(rec["line"])] = (str(rec["id"]), float(rec["reward"]))
    return done


REFERENCE_FIELD = "original"  # the original posting of a rewrite record (rewrite-augmented data)


def reference_text(record: dict) -> str:
    """The original posting a record's text rewrites: its `original` field (top level or, for a
    canonical record of `fairjax.data.jobs.read_records`, under `extra`), else its own text."""
    ref = record.get(REFERENCE_FIELD)
    if ref is None:
        ref = (record.get("extra") or {}).get(REFERENCE_FIELD)
    return ref if isinstance(ref, str) else record["text"]


def has_reference(record: dict) -> bool:
    return isinstance(record.get(REFERENCE_FIELD, (record.get("extra") or {}).get(REFERENCE_FIELD)), str)


def require_references(records: Sequence[dict], path: str | os.PathLike, reward: str) -> None:
    """ConfigError when no record of `path` carries an `original` field: every response would be
    its own original (similarity 1, header kept), so a reference-constrained reward's constraint
    could never act and it would train on its fairness term alone under another name."""
    if any(has_reference(r) for r in records):
        return
    raise ConfigError(f"config.reward.scorer={reward}: {path}: no record has an "
                      f"{REFERENCE_FIELD!r} field, so each response is its own original and the "
                      "faithfulness constraint is constant (always met); train on rewrite-augmented "
                      f"data (records with the rewrite in 'text' and the posting in "
                      f"{REFERENCE_FIELD!r}) or use reward.scorer=diversity")


def build_rewards(data_path: str | os.PathLike, records: Sequence[dict], scorer: Scorer,
                  spec: dict, cache_dir: str | os.PathLike, *, batch_size: int = 256,
                  progress: bool = True, cache_path: Optional[str | os.PathLike] = None
                  ) -> tuple[np.ndarray, Path]:
    """Rewards [N] float64 of `records` (canonical records of `data_path`, each with "id", "text"
    and "source" = "file:line"), and the cache file used (see module docstring).

    A scorer with `needs_reference` gets each record's `original` field as the original
    (rewrite-augmented data) and, where a record has none, the record's own text (the posting is
    its own original). `cache_path` overrides the derived cache file name.
    """
    data_sha, scorer_sha = file_sha256(data_path), spec_hash(spec)
    header = {"format": CACHE_FORMAT, "data_file": os.path.abspath(data_path), "data_sha256": data_sha,
              "scorer_sha256": scorer_sha, "scorer": scorer.name, "spec": spec}
    path = Path(cache_path) if cache_path else reward_cache_path(cache_dir, data_path, data_sha, scorer_sha)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = _read_build_cache(path, header)
    keyed = []
    for r in records:
        line = int(str(r["source"]).rsplit(":", 1)[1])
        if line in done and done[line][0] != str(r["id"]):
            raise RewardBuildError(f"{path}: line {line} is cached for record {done[line][0]!r}, the "
                                   f"data has {r['id']!r} there; delete the cache to rebuild")
        keyed.append((line, r))
    todo = [(line, r) for line, r in keyed if line not in done]
    refs = getattr(scorer, "needs_reference", False)
    if not path.is_file() or path.stat().st_size == 0:
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(header) + "\n")
    bar = tqdm(total=len(keyed), initial=len(keyed) - len(todo), unit="record",
               desc=f"reward {scorer.name} ({Path(data_path).name})", disable=not progress)

    def run(chunk):
        texts = [r["text"] for _, r in chunk]
        v = (scorer.score_texts(texts, [reference_text(r) for _, r in chunk]) if refs
             else scorer.score_texts(texts))
        v = np.asarray(v, np.float64)
        if v.shape != (len(chunk),):
            raise ValueError(f"returned shape {v.shape} for {len(chunk)} texts")
        bad = np.nonzero(~np.isfinite(v))[0]
        if bad.size:
            raise ScorerFailure(int(bad[0]), f"reward is {v[bad[0]]}")
        return v

    def fail(chunk, j, reason, out_f, partial):
        for (line, r), x in zip(chunk[:j], partial):
            out_f.write(json.dumps({"line": line, "id": r["id"], "reward": float(x)}) + "\n")
        out_f.flush()
        line, r = chunk[j]
        n_cached = len(done) + j
        raise RewardBuildError(f"{r['source']}: record id {r['id']!r}: scorer {scorer.name} failed: "
                               f"{reason}. {n_cached} rewards are cached in {path} and are kept; fix "
                               "or drop this record (data.on_error does not skip scorer failures)")

    try:
        with open(path, "a", encoding="utf-8") as out_f:
            for s in range(0, len(todo), batch_size):
                chunk = todo[s:s + batch_size]
                try:
                    vals = run(chunk)
                except ScorerFailure as e:
                    partial = run(chunk[:e.index]) if e.index else []
                    fail(chunk, e.index, e.reason, out_f, partial)
                except RewardBuildError:
                    raise
                except Exception as e:  # find the record that breaks the scorer, one at a time
                    partial = []
                    for j in range(len(chunk)):
                        try:
                            partial.append(run(chunk[j:j + 1])[0])
                        except Exception as e1:
                            reason = e1.reason if isinstance(e1, ScorerFailure) else f"{type(e1).__name__}: {e1}"
                            fail(chunk, j, reason, out_f, partial)
                    raise RewardBuildError(f"{data_path}: scorer {scorer.name} failed on a batch of "
                                           f"lines {chunk[0][0]}-{chunk[-1][0]} but on none alone: {e}")
                for (line, r), x in zip(chunk, vals):
                    done[line] = (str(r["id"]), float(x))
                    out_f.write(json.dumps({"line": line, "id": r["id"], "reward": float(x)}) + "\n")
                out_f.flush()
                bar.update(len(chunk))
    finally:
        bar.close()
    return np.array([done[line][1] for line, _ in keyed], np.float64), path
