"""Small pure helpers shared by the objectives in `fairjax/losses/` (float32 reductions).

Batch reductions under `jax.shard_map` (`mesh.impl = "shard_map"`): while a per-device loss is
traced inside `sharded_batch(axes)`, `masked_mean` (axis=None), `batch_sum`, `batch_mean` and
`batch_count` reduce over the GLOBAL batch (psum over the mesh's batch axes): their value is the
1-device value on every device, their gradient is this device's own term only (Σ_devices of the
per-device gradients = the global gradient, also through nonlinear functions of the means). Outside
that context (1 device, GSPMD) they are plain local reductions.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

_BATCH_AXES: contextvars.ContextVar[tuple] = contextvars.ContextVar("fairjax_batch_axes",
                                                                     default=())


@contextlib.contextmanager
def sharded_batch(axes: Sequence[str]):
    """Trace the losses inside with batch reductions over the mesh axes `axes` (shard_map)."""
    token = _BATCH_AXES.set(tuple(axes))
    try:
        yield
    finally:
        _BATCH_AXES.reset(token)


def batch_sum(x: jax.Array) -> jax.Array:
    """A local (this shard's) sum -> the global sum; gradient: the local term (module doc)."""
    axes = _BATCH_AXES.get()
    if not axes:
        return x
    return x + jax.lax.stop_gradient(jax.lax.psum(x, axes) - x)


def batch_count(x: jax.Array) -> jax.Array:
    """A local count / normaliser -> the global one (no gradient)."""
    axes = _BATCH_AXES.get()
    return jax.lax.psum(jax.lax.stop_gradient(x), axes) if axes else x


def batch_mean(x: jax.Array) -> jax.Array:
    """Mean of all entries of `x` [B, ...] over the global batch (float32)."""
    x = x.astype(jnp.float32)
    return batch_sum(jnp.sum(x)) / batch_count(jnp.float32(x.size))


def masked_sum(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Σ x·mask in float32.  x, mask: same (broadcastable) shape."""
    return jnp.sum(x.astype(jnp.float32) * mask.astype(jnp.float32))


def masked_mean(x: jax.Array, mask: jax.Array, axis=None, min_count: float = 1.0) -> jax.Array:
    """Σ x·m / max(Σ m, min_count) (float32; an all-masked input gives 0, never NaN).

    x, mask: same (broadcastable) shape; `axis` as in `jnp.sum` (None = all).
    """
    x = x.astype(jnp.float32)
    mask = jnp.broadcast_to(mask.astype(jnp.float32), x.shape)
    num = jnp.sum(x * mask, axis=axis)
    count = jnp.sum(mask, axis=axis)
    if axis is None:  # a batch reduction: global under `sharded_batch`
        num, count = batch_sum(num), batch_count(count)
    return num / jnp.maximum(count, min_count)


def masked_var(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Population variance of the masked entries (float32).  x, mask: same shape."""
    mean = masked_mean(x, mask)
    return masked_mean(jnp.square(x.astype(jnp.float32) - mean), mask)


def gather_positions(x: jax.Array, idxs: jax.Array) -> jax.Array:
    """Per-row gather along the time axis.

    x:    [B, T, ...]
    idxs: [B, K] int (positions into T)
    returns [B, K, ...] with out[b, k] = x[b, idxs[b, k]].
    """
    return jax.vmap(lambda row, i: jnp.take(row, i, axis=0))(x, idxs)


def gather_tokens(x: jax.Array, tokens: jax.Array) -> jax.Array:
    """Pick one vocabulary entry per position.

    x:      [..., V]
    tokens: [...] int
    returns [...] = x[..., tokens].
    """
    return jnp.take_along_axis(x, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def token_ce(logits: jax.Array, tokens: jax.Array, temp: float = 1.0) -> jax.Array:
    """Cross-entropy −log softmax(logits/temp)[token] = logsumexp(x) − x_a, in float32.

    logits: [..., V]; tokens: [...] int; returns [...].
    """
    x = logits.astype(jnp.float32)
    if temp != 1.0:
        x = x / temp
    return jax.nn.logsumexp(x, axis=-1) - gather_tokens(x, tokens)


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Log-probability of each next token under causal LM logits.

    logits: [B, T, V] (position j predicts token j+1)
    tokens: [B, T] int
    returns [B, T-1] float32: out[b, j] = log p(tokens[b, j+1] | tokens[b, :j+1]).
    """
    return -token_ce(logits[:, :-1], tokens[:, 1:])


def sequence_logprobs(logits: jax.Array, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """Σ_j mask[b, j+1]·log p(tokens[b, j+1]) per row.

    logits: [B, T, V]; tokens: [B, T] int; mask: [B, T] (1 = token scored, e.g. response tokens).
    returns [B] float32.
    """
    return jnp.sum(token_logprobs(logits, tokens) * mask[:, 1:].astype(jnp.float32), axis=-1)


def scatter_positions(values: jax.Array, idxs: jax.Array, valid: jax.Array, length: int,
                      fill: float | jax.Array = 0.0) -> jax.Array:
    """Inverse of `gather_positions` for scalars: write values at positions, `fill` elsewhere.

    values: [B, K]; idxs: [B, K] int; valid: [B, K] bool (invalid slots are not written);
    returns [B, length].
    """
    B = values.shape[0]
    base = jnp.full((B, length), fill, dtype=values.dtype)
    # Invalid slots are redirected to an out-of-range index and dropped.
    safe = jnp.where(valid, idxs, length)
    rows = jnp.arange(B)[:, None]
    return base.at[rows, safe].set(values, mode="drop")


def stats(x: jax.Array, mask: Optional[jax.Array] = None, prefix: str = "") -> dict[str, jax.Array]:
    """mean / std / min / max of the (masked) entries of x, as a metrics dict."""
    x = x.astype(jnp.float32)
    m = jnp.ones_like(x) if mask is None else jnp.broadcast_to(mask.astype(jnp.float32), x.shape)
    mean = masked_mean(x, m)
    var = masked_mean(jnp.square(x - mean), m)
    big = jnp.finfo(jnp.float32).max
    return {
        f"{prefix}mean": mean,
        f"{prefix}std": jnp.sqrt(var),
        f"{prefix}min": jnp.min(jnp.where(m > 0, x, big)),
        f"{prefix}max": jnp.max(jnp.where(m > 0, x, -big)),
    }
