"""Memory-lean reductions over the vocabulary for a linear output layer z = x·W + b.

The losses need only per-position reductions of the [N, V] scores, never the scores themselves:
* log-sum-exp  lse_n = log Σ_v exp(s·z_nv)                  (CE, CQL: CE = lse − s·z_{n,a_n})
* a column     z_{n,a_n} = x_n·W[:, a_n] + b[a_n]           (the gather at the taken token)
* a hinge sum  Σ_v max(z_nv − z_{n,a_n} + margin, 0)²       (ILQL's DM margin)

`linear_logsumexp` computes lse (and the hinge sum, in the same pass) in vocabulary chunks of
`chunk` columns with a `jax.custom_vjp`: the forward keeps only x, W, b and [N] results; the
backward recomputes one [N, chunk] block at a time (dz = g·scale·softmax(scale·z) for lse,
2·g·max(z − z_a + margin, 0) for the hinge), so no [N, V] float32 array is kept for the backward
pass (peak ≈ N·chunk floats instead of N·V). Gradients reach x, W, b and z_a.

W layout: `w_axis=1` for a Dense kernel [K, V]; `w_axis=0` for a tied embedding [V, K] (logits =
x·Eᵀ). Scores are computed as the Flax layers do: inputs and weights cast to `dtype`, the product
(plus bias) in `dtype`, then float32 — so the chunked results equal the dense path's.
"""
from __future__ import annotations

import functools
import os
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

DEFAULT_CHUNK = 8192
CHUNK_ENV = "FAIRJAX_VOCAB_CHUNK"


def resolve_chunk(chunk: Optional[int]) -> int:
    """An agent config's `vocab_chunk`: the value itself, or when None the environment's
    $FAIRJAX_VOCAB_CHUNK (benchmarks compare 0 = dense with chunked), else `DEFAULT_CHUNK`."""
    if chunk is not None:
        return int(chunk)
    raw = os.environ.get(CHUNK_ENV, "")
    try:
        return int(raw) if raw else DEFAULT_CHUNK
    except ValueError as e:
        raise ValueError(f"${CHUNK_ENV}={raw!r}: expected an integer (0 = materialise the "
                         f"vocabulary scores)") from e


class VocabScores(NamedTuple):
    """Per-position reductions of one head's scores over the vocabulary (all float32).

    taken: [..., ] z at the taken token; lse: [...] log Σ_v exp(z_v / temp); hinge: [...]
    Σ_v max(z_v − z_taken + margin, 0)² or None when not needed; vocab: |V| (static int).
    """

    taken: jax.Array
    lse: jax.Array
    hinge: Optional[jax.Array]
    vocab: int


def _chunks(v: int, chunk: int) -> tuple[int, int, int]:
    """(chunk size c, number of full chunks, remainder) for a vocabulary of v columns."""
    c = max(1, min(int(chunk), v))
    return c, v // c, v % c


def _block(x, w, b, start, size, w_axis, dtype):
    """Scores of columns [start, start+size): x [N, K] -> [N, size] float32."""
    dt = jnp.dtype(dtype)
    wc = jax.lax.dynamic_slice_in_dim(w, start, size, axis=w_axis).astype(dt)
    bc = jax.lax.dynamic_slice_in_dim(b, start, size).astype(dt)
    contract = 1 - w_axis  # K axis of W
    z = jax.lax.dot_general(x.astype(dt), wc, (((1,), (contract,)), ((), ())))
    return (z + bc).astype(jnp.float32)


def _fold(x, w, b, w_axis, chunk, dtype, init, step):
    """carry = step(carry, z_block, start) over all column blocks (full blocks scanned, then the
    remainder block, static)."""
    v = w.shape[w_axis]
    c, n, rem = _chunks(v, chunk)

    def body(carry, i):
        start = i * c
        return step(carry, _block(x, w, b, start, c, w_axis, dtype), start), None

    carry = init
    if n:
        carry, _ = jax.lax.scan(body, carry, jnp.arange(n))
    if rem:
        carry = step(carry, _block(x, w, b, n * c, rem, w_axis, dtype), n * c)
    return carry


def _backward(x, w, b, w_axis, chunk, dtype, aux, dz_fn):
    """Gradients (dx, dW, db, daux) given dz_fn(z_block, start, aux) -> (dz [N, c], daux)
    (one [N, c] block alive at a time)."""
    v = w.shape[w_axis]
    c, n, rem = _chunks(v, chunk)

    def one(start, size):
        wc = jax.lax.dynamic_slice_in_dim(w, start, size, axis=w_axis)
        bc = jax.lax.dynamic_slice_in_dim(b, start, size)
        f = lambda x_, wc_, bc_: _block(x_, wc_, bc_, 0, size, w_axis, dtype)  # noqa: E731
        z, vjp = jax.vjp(f, x, wc, bc)
        dz, daux = dz_fn(z, start, aux)
        dx, dwc, dbc = vjp(dz)
        return dx, dwc, dbc, daux

    # dW, db are written block by block into one buffer each (in place in the loop): no stacked
    # copy of the gradient and no concatenation.
    carry = (jnp.zeros_like(x), jnp.zeros(w.shape, jnp.float32), jnp.zeros(b.shape, jnp.float32),
             jax.tree.map(jnp.zeros_like, aux))

    def put(carry, start, size):
        dx, dw, db, daux = carry
        gx, gw, gb, ga = one(start, size)
        dw = jax.lax.dynamic_update_slice_in_dim(dw, gw.astype(jnp.float32), start, axis=w_axis)
        db = jax.lax.dynamic_update_slice_in_dim(db, gb.astype(jnp.float32), start, axis=0)
        return dx + gx, dw, db, jax.tree.map(jnp.add, daux, ga)

    if n:
        carry, _ = jax.lax.scan(lambda c_, i: (put(c_, i * c, c), None), carry, jnp.arange(n))
    if rem:
        carry = put(carry, n * c, rem)
    dx, dw, db, daux = carry
    return dx, dw.astype(w.dtype), db.astype(b.dtype), daux


# ----------------------------------------------------------------------------- lse + hinge
@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _lse_hinge(x, w, b, taken, scale, margin, w_axis, chunk, dtype):
    return _lse_hinge_fwd(x, w, b, taken, scale, margin, w_axis, chunk, dtype)[0]


def _lse_hinge_fwd(x, w, b, taken, scale, margin, w_axis, chunk, dtype):
    """One pass over the blocks: online log-sum-exp of scale·z (running max m, Σ exp(scale·z − m))
    and, when margin is not None, Σ_v max(z_v − taken + margin, 0)²."""
    n = x.shape[0]

    def step(carry, z, start):
        m, s, hinge = carry
        zs = z * scale
        m_new = jnp.maximum(m, jnp.max(zs, axis=-1))
        s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(zs - m_new[:, None]), axis=-1)
        if margin is not None:
            hinge = hinge + hinge_sq(z, taken, margin)
        return m_new, s, hinge

    zeros = jnp.zeros((n,), jnp.float32)
    init = (jnp.full((n,), -jnp.inf, jnp.float32), zeros, zeros)
    m, s, hinge = _fold(x, w, b, w_axis, chunk, dtype, init, step)
    lse = m + jnp.log(s)
    return (lse, hinge), (x, w, b, taken, lse)


def _lse_hinge_bwd(scale, margin, w_axis, chunk, dtype, res, g):
    x, w, b, taken, lse = res
    g_lse, g_hinge = g

    def dz_fn(z, start, dtaken):
        # d lse / dz = scale·softmax(scale·z);  d hinge / dz = 2·max(z − taken + margin, 0)
        dz = (g_lse[:, None] * scale) * jnp.exp(z * scale - lse[:, None])
        if margin is not None:
            dh = g_hinge[:, None] * 2.0 * jnp.maximum(z - taken[:, None] + margin, 0.0)
            dz = dz + dh
            dtaken = -jnp.sum(dh, axis=-1)
        return dz, dtaken

    return _backward(x, w, b, w_axis, chunk, dtype, jnp.zeros_like(taken), dz_fn)


_lse_hinge.defvjp(_lse_hinge_fwd, _lse_hinge_bwd)


def hinge_sq(z: jax.Array, taken: jax.Array, margin: float) -> jax.Array:
    """Σ_v max(z_v − taken + margin, 0)² over a block. z: [N, c]; taken: [N] -> [N]."""
    return jnp.sum(jnp.square(jnp.maximum(z - taken[:, None] + margin, 0.0)), axis=-1)


def linear_logsumexp(x: jax.Array,  # [..., K]
                     w: jax.Array,  # [K, V] (w_axis=1) or [V, K] (w_axis=0)
                     b: Optional[jax.Array] = None,  # [V]
                     scale: float = 1.0, *, taken: Optional[jax.Array] = None,  # [...]
                     margin: Optional[float] = None, w_axis: int = 1,
                     chunk: int = DEFAULT_CHUNK, dtype="float32"):
    """log Σ_v exp(scale·(x·W + b)_v) -> [...] float32, in vocabulary chunks (see module doc).

    With `margin` (and `taken`, the score at the taken token [...]) returns (lse, hinge) where
    hinge = Σ_v max(z_v − taken + margin, 0)² comes from the same pass over the blocks."""
    lead = x.shape[:-1]
    b = jnp.zeros((w.shape[w_axis],), jnp.float32) if b is None else b
    t = jnp.zeros(lead, jnp.float32) if taken is None else taken.astype(jnp.float32)
    lse, hinge = _lse_hinge(x.reshape(-1, x.shape[-1]), w, b, t.reshape(-1), float(scale),
                            None if margin is None else float(margin), int(w_axis), int(chunk),
                            str(dtype))
    if margin is None:
        return lse.reshape(lead)
    return lse.reshape(lead), hinge.reshape(lead)


# ----------------------------------------------------------------------------- columns
def linear_columns(x: jax.Array,  # [..., K]
                   w: jax.Array, b: Optional[jax.Array],
                   tokens: jax.Array,  # [...] int
                   *, w_axis: int = 1, dtype="float32") -> jax.Array:
    """(x·W + b)[..., token] -> [...] float32 without the other columns (gathers W's columns)."""
    dt = jnp.dtype(dtype)
    wt = jnp.take(w, tokens.astype(jnp.int32), axis=w_axis)  # [K, ...] or [..., K]
    if w_axis == 1:
        wt = jnp.moveaxis(wt, 0, -1)
    z = jnp.einsum("...k,...k->...", x.astype(dt), wt.astype(dt),
                   preferred_element_type=jnp.float32).astype(dt)
    if b is not None:
        z = z + jnp.take(b, tokens.astype(jnp.int32)).astype(dt)
    return z.astype(jnp.float32)


def linear_scores(x: jax.Array, w: jax.Array, b: Optional[jax.Array], tokens: jax.Array, *,
                  temp: float = 1.0, margin: Optional[float] = None, w_axis: int = 1,
                  chunk: int = DEFAULT_CHUNK, dtype="float32") -> VocabScores:
    """`VocabScores` of z = x·W + b at `tokens`: taken [...], lse of z/temp [...], and the DM
    hinge sum when `margin` is not None. x: [..., K]; tokens: [...] int."""
    taken = linear_columns(x, w, b, tokens, w_axis=w_axis, dtype=dtype)
    out = linear_logsumexp(x, w, b, 1.0 / temp, taken=taken, margin=margin, w_axis=w_axis,
                           chunk=chunk, dtype=dtype)
    lse, hinge = (out, None) if margin is None else out
    return VocabScores(taken=taken, lse=lse, hinge=hinge, vocab=int(w.shape[w_axis]))


def dense_scores(scores: jax.Array,  # [..., V]
                 tokens: jax.Array,  # [...] int
                 temp: float = 1.0, margin: Optional[float] = None) -> VocabScores:
    """The same reductions from materialised scores (the reference path)."""
    z = scores.astype(jnp.float32)
    taken = jnp.take_along_axis(z, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    lse = jax.nn.logsumexp(z / temp if temp != 1.0 else z, axis=-1)
    hinge = None
    if margin is not None:
        hinge = jnp.sum(jnp.square(jnp.maximum(z - taken[..., None] + margin, 0.0)), axis=-1)
    return VocabScores(taken=taken, lse=lse, hinge=hinge, vocab=int(z.shape[-1]))


# ----------------------------------------------------------------------------- LM heads
def lm_head_weights(lm_params) -> tuple[jax.Array, int]:
    """(W, w_axis) of an LM's output layer: untied `lm_head/kernel` [d, V] (axis 1), else the tied
    input embedding [V, d] (GPT-2 `wte`, LLaMA `embed_tokens`; axis 0)."""
    if "lm_head" in lm_params:
        return lm_params["lm_head"]["kernel"], 1
    emb = lm_params["wte"] if "wte" in lm_params else lm_params["embed_tokens"]
    return emb["embedding"], 0



def lm_logits_from_hidden(lm_params, hidden: jax.Array) -> jax.Array:
    """LM head on final hidden states [..., d] -> logits [..., V] float32 (untied `lm_head/kernel`,
    else the tied input embedding: GPT-2 `wte`, LLaMA `embed_tokens`)."""
    w, axis = lm_head_weights(lm_params)
    w = w if axis == 1 else w.T  # [d, V]
    return (hidden @ w.astype(hidden.dtype)).astype(jnp.float32)


def lm_token_ce(lm_params, hidden: jax.Array,  # [B, T, d] final hidden states
                tokens: jax.Array,  # [B, T] int
                dtype="float32", chunk: int = DEFAULT_CHUNK) -> jax.Array:
    """Next-token cross-entropy [B, T-1] = lse(logits_j) − logits_j[tok_{j+1}] from the hidden
    states and the LM head, in vocabulary chunks (equals `token_ce(logits[:, :-1], tokens[:, 1:])`)."""
    w, axis = lm_head_weights(lm_params)
    h, nxt = hidden[:, :-1], tokens[:, 1:]
    taken = linear_columns(h, w, None, nxt, w_axis=axis, dtype=dtype)
    lse = linear_logsumexp(h, w, None, w_axis=axis, chunk=chunk, dtype=dtype)
    return lse - taken
