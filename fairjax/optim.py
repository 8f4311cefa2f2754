"""The optax optimizer of a run, built from the config's `optim` block (`OptimConfig`).

`make_optimizer(optim, total_steps)` = global-norm clipping -> AdamW (decoupled weight decay,
optionally not applied to LayerNorm/RMSNorm scales and biases) with a warmup + (cosine | linear |
constant) learning-rate schedule. `optim` is an `OptimConfig`, converted once from the run
config's block by the caller (`typed_block(cfg.optim, OptimConfig, "optim")`): its allowed values
and ranges are checked there, so a raw ConfigDict is refused here.

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

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fairjax.errors import ConfigError
from fairjax.models.layout import BLOCK_PREFIXES
from fairjax.typed_config import check_choice, check_positive, require

SCHEDULES = ("cosine", "linear", "constant")
PARAM_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The `optim` block (configs/common.py documents each field). `batch_size` (GLOBAL rows per
    micro-batch) and `grad_accum` (micro-batches per optimizer step) size the step's batch;
    `param_dtype` is the train-state dtype of the trained params (bfloat16: float32 master
    weights in the optimizer state, `with_master_weights`)."""

    lr: float = 3e-4
    weight_decay: float = 0.0
    decay_norms_and_biases: bool = False
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    warmup_steps: int = 10
    schedule: str = "cosine"
    end_lr_ratio: float = 0.1
    clip: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    param_dtype: str = "float32"

    def __post_init__(self):
        check_choice("optim.schedule", self.schedule, SCHEDULES)
        object.__setattr__(self, "param_dtype", self.param_dtype or "float32")  # None: float32
        check_choice("optim.param_dtype", self.param_dtype, PARAM_DTYPES)
        for name in ("lr", "batch_size", "grad_accum"):
            check_positive(f"optim.{name}", getattr(self, name))
        for name in ("weight_decay", "warmup_steps", "end_lr_ratio"):
            check_positive(f"optim.{name}", getattr(self, name), allow_zero=True)
        if not (0.0 <= self.b1 < 1.0 and 0.0 <= self.b2 < 1.0):
            raise ConfigError(f"config.optim.b1/b2={self.b1}/{self.b2}; expected in [0, 1)")


def make_schedule(optim: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `optim.lr` over `optim.warmup_steps`, then decay to
    `optim.lr * optim.end_lr_ratio` at `total_steps` (cosine | linear) or stay flat (constant)."""
    require(optim, OptimConfig, "make_schedule", "optim")
    warmup = int(min(optim.warmup_steps, max(total_steps - 1, 0)))
    decay_steps = max(int(total_steps) - warmup, 1)
    end = optim.lr * optim.end_lr_ratio
    if optim.schedule == "cosine":
        after = optax.cosine_decay_schedule(optim.lr, decay_steps, alpha=optim.end_lr_ratio)
    elif optim.schedule == "linear":
        after = optax.linear_schedule(optim.lr, end, decay_steps)
    else:
        after = optax.constant_schedule(optim.lr)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, optim.lr, warmup), after], [warmup])


def decay_mask(params: Any) -> Any:
    """True where weight decay applies: matrices/embeddings (ndim >= 2); False for norm
    scales and biases (ndim <= 1). Blocks of a `scan_layers` model (under `h` / `layers`) carry a
    leading layer axis, which does not count."""
    def leaf(path, p):
        stacked = any(getattr(k, "key", None) in BLOCK_PREFIXES for k in path)
        return p.ndim - int(stacked) >= 2

    return jax.tree_util.tree_map_with_path(leaf, params)


def make_optimizer(optim: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """clip_by_global_norm(optim.clip) (skipped when clip <= 0) -> AdamW(schedule, b1, b2, eps,
    weight_decay; mask = `decay_mask` unless `optim.decay_norms_and_biases`); bfloat16
    `param_dtype`: wrapped in `with_master_weights`."""
    require(optim, OptimConfig, "make_optimizer", "optim")
    schedule = make_schedule(optim, total_steps)
    mask = None if optim.decay_norms_and_biases else decay_mask
    parts = []
    if optim.clip > 0:
        parts.append(optax.clip_by_global_norm(optim.clip))
    parts.append(optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                             weight_decay=optim.weight_decay, mask=mask))
    opt = optax.chain(*parts)
    return with_master_weights(opt) if optim.param_dtype != "float32" else opt


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
