"""The FMs-at-work workflow behind `python -m fairjax.train --config=configs/ilql.py`:

    BC (RUN_DIR/bc)  ->  ILQL from the BC policy (RUN_DIR)  ->  evaluation (RUN_DIR/eval)

Stages are selected by the config's `pipeline` block and configured by its `stages` block
(configs/ilql.py carries configs/bc.py and configs/eval.py there; no file is read here):
`bc_warm_start` trains a BC policy first unless `init.policy` already names one; `evaluate` generates a rewrite of every
eval posting with the BC policy (ILQL β = 0) and the ILQL-perturbed policy at each β in
`pipeline.adv_weights`, scores them against the original postings and writes the report.
Every stage resumes: a finished BC or ILQL run returns at once, the evaluation continues its
eval_logs.jsonl. Configs without a `pipeline` block (or with every stage off) just train.
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any, Optional

from ml_collections import ConfigDict

from fairjax import evaluate, parallel
from fairjax.agents import registry
from fairjax.cli import is_user_error
from fairjax.errors import ConfigError
from fairjax.io import run_dir as rd
from fairjax.rewards.registry import reward_config
from fairjax.rewards.training import require_data_rewards
from fairjax.stages import SHARED  # fields the BC stage shares with the main run
from fairjax.train.build import train


def stage_config(cfg: Any, name: str):
    """A copy (unlocked) of `cfg.stages.<name>`, the stage config the main config carries (no
    file is read: an installed package and a run dir's saved config reproduce the pipeline)."""
    stages = cfg.get("stages")
    if stages is None or stages.get(name) is None:
        raise ConfigError(f"config.stages.{name} is missing: the pipeline stages need their "
                          f"config inside the main config (see configs/ilql.py `c.stages`), or "
                          f"turn the stage off (config.pipeline.*)")
    out = copy.deepcopy(stages[name])
    out.unlock()
    return out


def has_stages(cfg: Any) -> bool:
    p = cfg.get("pipeline")
    return p is not None and (p.bc_warm_start or p.evaluate)


def bc_config(cfg: Any, run_dir: Path):
    """The BC stage's config: `cfg.stages.bc` with the main run's shared fields and pipeline.bc_*."""
    bc = stage_config(cfg, "bc")
    for key in SHARED:
        value = cfg[key]
        bc[key] = ConfigDict(value.to_dict()) if isinstance(value, ConfigDict) else value
    bc.optim.batch_size = cfg.optim.batch_size
    bc.reward.scorer = ""  # BC ignores rewards (an online run scores its own samples)
    bc.train.steps = cfg.pipeline.bc_steps
    bc.optim.lr = cfg.pipeline.bc_lr
    for key in ("progress", "tensorboard", "async_checkpoint", "log_every", "eval_every",
                "eval_batches"):
        bc.train[key] = cfg.train[key]
    # the main run's checkpoint interval (a relaunch resumes BC mid-way); always one at the end
    bc.train.save_every = min(cfg.train.save_every or cfg.pipeline.bc_steps, cfg.pipeline.bc_steps)
    bc.run_dir = str(run_dir)
    bc.lock()
    return bc


def eval_config(cfg: Any, run_dir: Path):
    """`cfg.stages.eval` pointed at the run: the objective's evaluation variants when it declares
    them (`Decoding.variants`: ILQL's bc (β=0) and ilql_b<β> per adv weight); otherwise the run's
    policy beside the BC warm start. Temperature / top_k: the objective's decoding settings."""
    decoding = registry.get(cfg.algorithm).decoding
    ev = stage_config(cfg, "eval")
    p = cfg.pipeline
    ev.checkpoint = str(run_dir)
    ev.output_dir = str(run_dir / "eval")
    ev.seed = cfg.seed
    ev.limit = p.eval_limit
    # 0 = from the eval postings' lengths, capped at half the context (configs/ilql.py)
    ev.generation.max_new_tokens = p.get("eval_max_new_tokens", 0)
    if decoding.variants is not None:
        ev.variants = decoding.variants(cfg)
    else:  # the run's policy sampled plainly, beside the BC warm start it started from
        ev.variants = f"{cfg.algorithm}:0"
        ev.step = "latest"
        if cfg.init.policy:
            ev.extra_checkpoints = f"bc={cfg.init.policy}"
    gen = decoding.settings(cfg) if decoding.settings is not None else None
    ev.generation.temperature = gen.temperature if gen is not None else 1.0
    ev.generation.top_k = gen.top_k if gen is not None else 0
    ev.generation.top_p = getattr(gen, "top_p", 1.0) if gen is not None else 1.0  # ILQL's block has none
    ev.scorer.pools = p.eval_pools
    # judged with the embedder the run trained on (reward.embedder)
    ev.scorer.embedder = reward_config(cfg.get("reward")).embedder
    ev.n_boot = p.eval_n_boot
    ev.lock()
    return ev


def run(cfg: Any, run_dir: Optional[str] = None) -> dict:
    """Run the configured stages; returns {"bc": RunResult|None, "train": RunResult,
    "eval": summary|None}. A launch that creates the run dir and stops on a user error (bad data,
    config or file; `fairjax.cli.is_user_error`) before any checkpoint removes it again, so a
    failed start leaves nothing behind."""
    run_dir = Path(run_dir or cfg.run_dir).absolute()
    fresh = not run_dir.exists()
    try:
        return _run(cfg, run_dir)
    except Exception as e:
        # a user's mistake (bad data/config/file) only: a crash keeps its logs for diagnosis
        if fresh and parallel.is_main_process() and is_user_error(e) and not any(
                rd.has_checkpoint(d) for d in (run_dir, run_dir / "bc")):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _run(cfg: Any, run_dir: Path) -> dict:
    out: dict = {"bc": None, "eval": None}
    if not has_stages(cfg):
        out["train"] = train(cfg, run_dir)
        return out
    cfg = cfg.copy_and_resolve_references()
    cfg.unlock()
    p = cfg.pipeline
    if p.bc_warm_start and not cfg.init.policy:
        spec = registry.get(cfg.algorithm)
        if not spec.online:  # online objectives score rollouts
            # refused before BC trains for a run that cannot follow
            require_data_rewards(reward_config(cfg.reward), cfg.data.train, cfg.algorithm,
                                 text_field=cfg.data.text_field, on_error=cfg.data.on_error,
                                 trains_on_reward=spec.trains_on_reward)
        bc_dir = run_dir / "bc"
        _say(f"[pipeline 1/3] BC warm start -> {bc_dir}")
        out["bc"] = train(bc_config(cfg, bc_dir), bc_dir)
        cfg.init.policy = str(bc_dir)
    _say(f"[pipeline 2/3] {cfg.algorithm.upper()} -> {run_dir}"
         + (f" (policy from {cfg.init.policy})" if cfg.init.policy else ""))
    cfg.lock()
    out["train"] = train(cfg, run_dir)
    if p.evaluate:
        if parallel.is_main_process():
            ev = eval_config(cfg, run_dir)
            _say(f"[pipeline 3/3] evaluation of {ev.variants} vs the original postings -> "
                 f"{ev.output_dir}")
            out["eval"] = evaluate.evaluate(ev)
            _say(evaluate.format_summary(out["eval"]))
    return out


def _say(text: str) -> None:
    if parallel.is_main_process():
        print(text, flush=True)
