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

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fairjax.errors import ConfigError

SCHEDULES = ("cosine", "linear", "constant")
PARAM_DTYPES = ("float32", "bfloat16")


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
    scales and biases (ndim <= 1). Blocks of a `scan_layers` model (under `h` / `layers`) carry a
    leading layer axis, which does not count."""
    from fairjax.models.layout import BLOCK_PREFIXES

    def leaf(path, p):
        stacked = any(getattr(k, "key", None) in BLOCK_PREFIXES for k in path)
        return p.ndim - int(stacked) >= 2

    return jax.tree_util.tree_map_with_path(leaf, params)


def make_optimizer(cfg: Any, total_steps: int) -> optax.GradientTransformation:
    """clip_by_global_norm(cfg.clip) (skipped when clip <= 0) -> AdamW(schedule, b1, b2, eps,
    weight_decay; mask = `decay_mask` unless `cfg.decay_norms_and_biases`)."""
    param_dtype = getattr(cfg, "param_dtype", None) or "float32"
    if param_dtype not in PARAM_DTYPES:
        raise ConfigError(f"optim.param_dtype={param_dtype!r}; expected one of {list(PARAM_DTYPES)}")
    schedule = make_schedule(cfg, total_steps)
    mask = None if cfg.decay_norms_and_biases else decay_mask
    parts = []
    if cfg.clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=mask))
    opt = optax.chain(*parts)
    return with_master_weights(opt) if param_dtype != "float32" else opt


class MasterState(NamedTuple):
    """float32 master copy of the (low-precision) params and the wrapped optimizer's state."""

    master: Any
    inner: Any


def with_master_weights(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """bf16 parameters with float32 master weights (`optim.param_dtype = "bfloat16"`).

    The train state's params are low precision (the forward/backward read them: half the bytes);
    this wrapper keeps θ32 in its state, runs `inner` on float32 gradients against θ32
    (θ32 ← θ32 + inner(g32)), and returns updates u = θ32_new − θ (float32) so that
    `optax.apply_updates(θ, u)` = cast(θ32_new) to θ's dtype. Float32 params pass through
    unchanged (the plain path)."""

    def init(params):
        master = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
        return MasterState(master=master, inner=inner.init(master))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("with_master_weights.update needs params (the low-precision copy)")
        g32 = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
        u, inner_state = inner.update(g32, state.inner, state.master)
        master = optax.apply_updates(state.master, u)
        out = jax.tree.map(lambda m, p: m - p.astype(jnp.float32), master, params)
        return out, MasterState(master=master, inner=inner_state)

    return optax.GradientTransformation(init, update)


def cast_params(params: Any, dtype: str) -> Any:
    """Floating leaves of `params` in `dtype` (the bf16 train-state copy of master weights)."""
    return jax.tree.map(lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p,
                        params)
