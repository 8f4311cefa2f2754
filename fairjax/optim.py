"""The optax optimizer of a run, built from the config's `optim` block.

`make_optimizer(optim_cfg, total_steps)` = global-norm clipping -> AdamW (decoupled weight decay,
optionally not applied to LayerNorm/RMSNorm scales and biases) with a warmup + (cosine | linear |
constant) learning-rate schedule.

Gradient accumulation is NOT done here with `optax.MultiSteps`: the trainer's compiled step
scans over `grad_accum` micro-batches (`fairjax.train.loop.make_train_step`) and applies ONE optimizer
update per step. Why: (1) one jit call = one optimizer step, so `Algorithm.update_frozen` (ILQL's
Polyak target update) runs once per optimizer step exactly as upstream
(`iql_train_loop.py` updates after every `grad_accum_steps` micro-batches) without a host-side
counter; (2) no accumulator buffer lives in the optimizer state (MultiSteps keeps a full copy of
the gradients in `opt_state` and checkpoints it); (3) schedules, logging and checkpoints count
optimizer steps, never micro-steps. The schedule therefore receives optimizer-step counts.
"""
from __future__ import annotations

from typing import Any

import jax
import optax

from fairjax.errors import ConfigError

SCHEDULES = ("cosine", "linear", "constant")


def make_schedule(cfg: Any, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `cfg.lr` over `cfg.warmup_steps`, then decay to
    `cfg.lr * cfg.end_lr_ratio` at `total_steps` (cosine | linear) or stay flat (constant)."""
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"optim.schedule={cfg.schedule!r}; expected one of {list(SCHEDULES)}")
    warmup = int(min(cfg.warmup_steps, max(total_steps - 1, 0)))
    decay_steps = max(int(total_steps) - warmup, 1)
    end = cfg.lr * cfg.end_lr_ratio
    if cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.end_lr_ratio)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(cfg.lr, end, decay_steps)
    else:
        after = optax.constant_schedule(cfg.lr)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), after], [warmup])


def decay_mask(params: Any) -> Any:
    """True where weight decay applies: matrices/embeddings (ndim >= 2); False for norm
    scales and biases (ndim <= 1)."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: Any, total_steps: int) -> optax.GradientTransformation:
    """clip_by_global_norm(cfg.clip) (skipped when clip <= 0) -> AdamW(schedule, b1, b2, eps,
    weight_decay; mask = `decay_mask` unless `cfg.decay_norms_and_biases`)."""
    schedule = make_schedule(cfg, total_steps)
    mask = None if cfg.decay_norms_and_biases else decay_mask
    parts = []
    if cfg.clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=mask))
    return optax.chain(*parts)
