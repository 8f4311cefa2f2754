"""The reward a run trains on: score (or read), normalise and store it when the data is built.

`prepare_rewards(reward, run_dir, train_path, eval_path, algorithm=...)` (`reward`: the run
config's reward block as a `registry.RewardConfig`) runs before the training data is laid out:

1. rewards: `reward.scorer` set -> every train/eval record is scored by that scorer
   (`registry.build_reward_scorer`) through the cached build (`precompute.build_rewards`, progress
   bar, cache keyed by data and scorer hashes under `reward.cache_dir`); otherwise the records'
   own `reward` field is used;
2. normalisation: `reward.normalize` statistics are fitted on the train split's rewards
   (`normalize.fit_normalizer`) and stored in RUN_DIR/reward_normalizer.json; a resumed run (or
   anything that reuses the run's rewards) loads that file and applies it unchanged;
3. the rewarded copies RUN_DIR/data/rewarded/{train,eval}.jsonl (the records as read, `reward` =
   the normalised reward, `reward_raw` = before normalisation) are what the objective trains on;
4. RUN_DIR/reward_spec.json names the trained reward (scorer spec, normalisation, data files,
   cache files); `registry.trained_reward` reads it for every summary.

Objectives without a reward (BC) keep their data untouched and record `{"scorer": "none"}`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from fairjax.data.jobs import DataError, read_records
from fairjax.errors import ConfigError
from fairjax.rewards import normalize as norm
from fairjax.rewards.precompute import build_rewards, has_reference, require_references
from fairjax.rewards.registry import (DEMO_STANDIN, RUN_NORMALIZER_FILE, RUN_SPEC_FILE,
                                      RewardConfig, build_reward_scorer, reward_spec)

REWARDED_DIR = "rewarded"


def _raw_objects(path: str, records: list[dict]) -> list[dict]:
    """The records as written in a JSONL file (by source line); CSV: the canonical records."""
    if path.lower().endswith(".csv"):
        return [{k: v for k, v in r.items() if k not in ("source", "extra")} | r.get("extra", {})
                for r in records]
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    return [json.loads(lines[int(r["source"].rsplit(":", 1)[1]) - 1]) for r in records]


def _field_spec(train_path: str, demo_data: bool) -> dict:
    """The trained reward when it is the data's own `reward` field (`demo_data`: the generated
    demo corpus, whose field is a stand-in)."""
    if demo_data:
        return {"scorer": "demo_standin", "note": DEMO_STANDIN}
    return {"scorer": "data_field", "field": "reward", "data": os.path.abspath(train_path),
            "note": "rewards precomputed into the data; their scorer is whatever wrote the field"}


def _field_rewards(records: list[dict]) -> np.ndarray:
    missing = [r for r in records if r.get("reward") is None]
    if missing:
        raise ValueError(f"{missing[0]['source']}: record id {missing[0]['id']!r} has no 'reward' "
                         f"({len(missing)} records lack it): train on `--config.reward.scorer=diversity` "
                         "(scored when the data is built) or precompute the field with "
                         "`python -m fairjax.score --annotate`")
    return np.array([r["reward"] for r in records], np.float64)


def require_data_rewards(reward: RewardConfig, train_path: str, algorithm: str, *,
                         text_field: str = "text", on_error: str = "raise",
                         trains_on_reward: bool = True) -> None:
    """DataError now when the run would train on its data's own `reward` field and a record of
    `train_path` (the config's `data.train`; "" = the demo corpus) lacks one (ConfigError for a
    reward term offline data cannot give, `refuse_reference_terms`): a pipeline calls it before
    its BC stage spends any time. `trains_on_reward`: the objective's capability
    (`agents.registry.Objective`)."""
    if trains_on_reward and reference_term(reward):
        try:
            refuse_reference_terms(reward, algorithm, _records_or_none(train_path, text_field))
        except ValueError as e:
            raise ConfigError(str(e)) from e
    if not trains_on_reward or reward.scorer or not train_path or os.path.isdir(train_path):
        return
    try:
        _field_rewards(read_records(train_path, text_field=text_field, on_error=on_error))
    except DataError:
        raise
    except ValueError as e:
        raise DataError(str(e)) from e


def _records_or_none(path: str, text_field: str) -> Optional[list]:
    """The train records when `path` is a JSONL/CSV file (None for the demo or TFDS)."""
    if not path or os.path.isdir(path):
        return None
    return read_records(path, text_field=text_field, on_error="skip")


def reference_term(reward: RewardConfig) -> Optional[str]:
    """The config key of a reward term that needs a reference text (preservation), or None."""
    if reward.scorer == "composite" and "preservation" in reward.composite.terms:
        return f"config.reward.composite.terms={','.join(reward.composite.terms)!r}"
    if reward.scorer == "preservation":
        return "config.reward.scorer='preservation'"
    return None


def refuse_reference_terms(reward: RewardConfig, algorithm: str,
                           records: Optional[Sequence[dict]] = None) -> None:
    """ValueError when an offline objective would train on a term that needs a reference text
    (preservation) and no train record carries one (an `original` field, as rewrite-augmented
    data has): the records are their own originals, so it scores every posting 1."""
    where = reference_term(reward)
    if where is None or (records is not None and any(has_reference(r) for r in records)):
        return
    raise ValueError(f"{where}: the preservation reward compares a text with its original, and "
                     f"{algorithm} trains offline on the postings themselves (no other reference "
                     "text), so it would score every record 1: drop the term, train on rewrite-augmented "
                     "data (records with an 'original' field), or train an online objective, "
                     "which scores its rewrites against the originals")


def refuse_constant(train_rewards: np.ndarray, spec: dict, train_path: str) -> None:
    """ValueError naming the reward when the training rewards [N] have zero variance (N > 1):
    no signal, and standardisation would train on zeros."""
    r = np.asarray(train_rewards, np.float64)
    if r.size > 1 and float(np.ptp(r)) == 0.0:
        raise ValueError(f"the training reward {spec.get('scorer')!r} is the constant {r[0] + 0.0:g} on "
                         f"all {r.size} records of {train_path}: it carries no signal; choose "
                         "another config.reward.scorer or data with varied rewards")


def reward_cache_dir(reward: RewardConfig) -> str:
    """`reward.cache_dir`, default ~/.cache/fairjax/rewards (pool embeddings under pools/)."""
    return (reward.cache_dir
            or os.path.join(os.path.expanduser("~"), ".cache", "fairjax", "rewards"))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def prepare_rewards(reward: RewardConfig, run_dir: str | os.PathLike, train_path: str,
                    eval_path: Optional[str], *, algorithm: str, demo_data: bool = False,
                    text_field: str = "text", on_error: str = "raise", progress: bool = True,
                    trains_on_reward: bool = True) -> tuple[str, Optional[str]]:
    """(train path, eval path) to train on; see the module docstring. `reward`: the run's reward
    block; `algorithm`: its objective (named in messages); `demo_data`: the paths are the
    generated demo corpus; `text_field` / `on_error`: how the records are read (`data.*`);
    `trains_on_reward`: the objective's capability (False: nothing is scored or read)."""
    run_dir = Path(run_dir)
    r = reward
    mode = r.normalize
    spec_path = run_dir / RUN_SPEC_FILE
    if not trains_on_reward:
        _write_json(spec_path, {"scorer": "none", "note": f"{algorithm} trains on no reward"})
        return train_path, eval_path
    if not r.scorer and mode == "none":
        _write_json(spec_path, {**_field_spec(train_path, demo_data), "normalize": "none"})
        return train_path, eval_path
    splits = {"train": train_path, **({"eval": eval_path} if eval_path else {})}
    records = {s: read_records(p, text_field=text_field, on_error=on_error)
               for s, p in splits.items()}
    if r.scorer:
        if r.scorer == "constrained":  # offline data must carry the originals it rewrites
            require_references(records["train"], train_path, r.scorer)

        spec = reward_spec(r, default_pool(train_path))
        refuse_reference_terms(r, algorithm, records["train"])
        cache_dir = reward_cache_dir(r)
        scorer = build_reward_scorer(r, default_pool(train_path),
                                     cache_dir=os.path.join(cache_dir, "pools"))
        raw, caches = {}, {}
        for s, p in splits.items():
            raw[s], caches[s] = build_rewards(p, records[s], scorer, spec, cache_dir, progress=progress)
        spec = {**spec, "cache": {s: str(c) for s, c in caches.items()}}
    else:
        raw = {s: _field_rewards(recs) for s, recs in records.items()}
        spec = _field_spec(train_path, demo_data)
    refuse_constant(raw["train"], spec, train_path)
    norm_path = run_dir / RUN_NORMALIZER_FILE
    if norm_path.is_file():  # a resumed run applies the statistics it trained with
        stats = norm.load_normalizer(norm_path)
        if stats["mode"] != mode:
            raise ValueError(f"{norm_path}: this run was trained with reward.normalize="
                             f"{stats['mode']!r}, the config says {mode!r}; use a new run_dir")
    else:
        stats = norm.fit_normalizer(raw["train"], mode)
        run_dir.mkdir(parents=True, exist_ok=True)
        norm.save_normalizer(stats, norm_path)
    out = {}
    for s, p in splits.items():
        rows = _raw_objects(p, records[s])
        for row, x, y in zip(rows, raw[s], norm.apply_normalizer(raw[s], stats)):
            row["reward_raw"], row["reward"] = float(x), float(y)
        out[s] = run_dir / "data" / REWARDED_DIR / f"{s}.jsonl"
        _write_jsonl(out[s], rows)
    _write_json(spec_path, {**spec, "normalize": mode, "normalizer": str(norm_path),
                            "rewarded": {s: str(p) for s, p in out.items()},
                            "data": {s: os.path.abspath(p) for s, p in splits.items()},
                            "train_reward_raw": {"mean": float(raw["train"].mean()),
                                                 "std": float(raw["train"].std()),
                                                 "n": int(raw["train"].size)}})
    return str(out["train"]), (str(out["eval"]) if "eval" in out else None)


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def rewarded_paths(run_dir: str | os.PathLike, train_path: str, eval_path: Optional[str]
                   ) -> tuple[str, Optional[str]]:
    """The paths `prepare_rewards` returned for this run (from RUN_DIR/reward_spec.json): the
    rewarded copies when it wrote them, else the inputs."""
    spec_path = Path(run_dir) / RUN_SPEC_FILE
    done = {}
    if spec_path.is_file():
        with open(spec_path, encoding="utf-8") as f:
            done = json.load(f).get("rewarded", {})
    return done.get("train", train_path), (done.get("eval", eval_path) if eval_path else None)


def source_paths(run_dir: str | os.PathLike, train_path: str, eval_path: Optional[str]
                 ) -> tuple[str, Optional[str]]:
    """The inverse of `rewarded_paths`: the data files that `prepare_rewards` read when
    (train_path, eval_path) are its rewarded copies in `run_dir`, else the paths unchanged."""
    spec_path = Path(run_dir) / RUN_SPEC_FILE
    spec = {}
    if spec_path.is_file():
        with open(spec_path, encoding="utf-8") as f:
            spec = json.load(f)
    done, data = spec.get("rewarded", {}), spec.get("data", {})

    def source(split, path):
        if path and isinstance(data, dict) and done.get(split) == str(path) and split in data:
            return data[split]
        return path
    return source("train", train_path), source("eval", eval_path)


def default_pool(train_path: str) -> Optional[str]:
    """The candidate pool used when `reward.pool` is empty: candidates.jsonl beside the (source)
    train file (the demo corpus writes one there), or None."""
    path = os.path.join(os.path.dirname(train_path), "candidates.jsonl")
    return path if os.path.isfile(path) else None


def record_online_reward(reward: RewardConfig, run_dir: str | os.PathLike, train_path: str) -> None:
    """RUN_DIR/reward_spec.json of an online objective, which scores its own rollouts with
    `reward.scorer` during training (no data build, no normalisation statistics)."""
    spec = reward_spec(reward, default_pool(train_path))
    _write_json(Path(run_dir) / RUN_SPEC_FILE,
                {**spec, "note": "scored on the policy's own rollouts during training"})
