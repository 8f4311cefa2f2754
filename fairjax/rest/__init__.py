"""Grow -> improve rounds (ReST, Gulcehre et al. 2023); the program is
`python -m fairjax.rest --config=configs/rest.py` (fairjax/cli/rest.py).

`run(cfg, run_dir)`: for r in 0..rest.rounds-1,
1. grow: the round's sampler (round 0: `rest.initial`, `systems.load_rewriter`; later rounds:
   the previous round's trained policy, `systems.PolicyRewriter`) rewrites every train posting
   `rest.k` times; `data.augment.augment` scores them with the training reward (`reward.*`,
   cached) into RUN_DIR/round_<r>/data/ (augmented/scored/pairs JSONL, stats.json);
2. improve: the config's offline objective (`cfg.algorithm`) trains on that data
   (`data.train` = the round's augmented.jsonl, rewards from the cache) into
   RUN_DIR/round_<r>/train, initialised from the previous round's policy (`init.policy`).
RUN_DIR/rest_summary.json lists every round's reward statistics. Resumable: a round whose
stats.json exists is not grown again, and its training run resumes from its checkpoints.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Optional

from fairjax import systems
from fairjax.data.augment import STATS, augment
from fairjax.data.config import DataConfig
from fairjax.data.demo import write_demo
from fairjax.generate import GenerationConfig, Policy
from fairjax.rewards.registry import reward_config
from fairjax.runs import load
from fairjax.train.build import train

SUMMARY = "rest_summary.json"


def _data(cfg: Any, data: DataConfig, run_dir: Path) -> tuple[str, Optional[str], str]:
    """(train postings, eval postings or None, candidate pool) — the demo corpus in
    RUN_DIR/data when `data.train` is empty (`data`: the typed `config.data`)."""
    train, ev = data.train, data.eval or None
    if not train:
        d = run_dir / "data"
        if not (d / "jobs_train.jsonl").is_file():
            write_demo(d, n_postings=data.demo_postings, seed=cfg.seed)
        train, ev = str(d / "jobs_train.jsonl"), str(d / "jobs_eval.jsonl")
    pool = cfg.reward.pool or os.path.join(os.path.dirname(os.path.abspath(train)), "candidates.jsonl")
    if not os.path.isfile(pool.split(",")[0]):
        raise ValueError(f"config.reward.pool={cfg.reward.pool!r}: no candidate pool at {pool}")
    return train, ev, pool


def _sampler(cfg: Any, prev: Optional[Path]):
    if prev is None:
        return systems.load_rewriter(cfg.rest.initial, temperature=cfg.rest.temperature,
                                     batch_size=cfg.rest.batch_size, seed=cfg.seed)
    module, params, tok = load(str(prev))
    gen = GenerationConfig(max_new_tokens=1, mode="sample", temperature=cfg.rest.temperature)
    return systems.PolicyRewriter(Policy.lm(module, params), tok, gen, name=str(prev),
                                  batch_size=cfg.rest.batch_size, seed=cfg.seed)


def round_config(cfg: Any, data_path: str, eval_path: Optional[str], pool: str,
                 prev: Optional[Path]):
    """The training config of one round (this config on the round's data)."""
    rc = cfg.copy_and_resolve_references()
    rc.unlock()
    rc.data.train, rc.data.eval, rc.reward.pool = data_path, eval_path or "", pool
    if prev is not None:
        rc.init.policy, rc.init.step = str(prev), "latest"
    rc.lock()
    return rc


def run(cfg: Any, run_dir: Optional[str] = None) -> dict:
    """All rounds (module docstring); returns the summary written to RUN_DIR/rest_summary.json."""
    if cfg.rest.rounds < 1:
        raise ValueError(f"config.rest.rounds={cfg.rest.rounds}; expected >= 1")
    root = Path(run_dir or cfg.run_dir).absolute()
    root.mkdir(parents=True, exist_ok=True)
    data = DataConfig.from_block(cfg.data)
    train_path, eval_path, pool = _data(cfg, data, root)
    reward = dataclasses.replace(reward_config(cfg.reward), pool=pool)  # the rounds' pool
    prev, rounds = None, []
    for r in range(cfg.rest.rounds):
        rd = root / f"round_{r}"
        stats_path = rd / "data" / STATS
        if stats_path.is_file():
            stats = json.loads(stats_path.read_text())
        else:
            stats = augment(train_path, rd / "data", _sampler(cfg, prev), cfg.rest.k, reward,
                            default_pool=pool, tau=cfg.rest.tau,
                            require_header=cfg.rest.require_header,
                            min_margin=cfg.rest.min_margin, limit=cfg.rest.limit,
                            text_field=data.text_field)
        result = train(round_config(cfg, stats["files"]["augmented.jsonl"], eval_path, pool, prev),
                       rd / "train")
        rounds.append({"round": r, "sampler": stats["policy"], "data": stats,
                       "train_run": str(rd / "train"), "steps": int(result.step)})
        prev = rd / "train"
        summary = {"rounds": rounds, "algorithm": cfg.algorithm, "k": cfg.rest.k,
                   "reward": reward.scorer, "pool": pool}
        (root / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")
    return summary
