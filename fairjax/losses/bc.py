"""Behaviour cloning: response-only next-token NLL (FMs-at-work / ILQL `BC_LM`).

    L_BC = Σ_j w_j · attn_{j+1} · CE(logits_j, tok_{j+1}) / Z

with w_j = 1 at action positions (the `</s>` ... last response token, i.e. the positions that emit
the response tokens and `</a>`), `transition_weight` elsewhere (prompt: 0 by default).

Two normalisations (`BCHparams.normalize`):
* ``"upstream"`` (default, exactly FMs-at-work/ILQL `awac_loss`): Z = Σ_j attn_{j+1}, the number of
  ALL non-pad next tokens, prompt included. The loss therefore shrinks with the prompt length: a
  long prompt dilutes the response NLL, and batches with different prompt/response ratios weight
  tokens differently.
* ``"per_token"``: Z = Σ_j w_j·attn_{j+1}, a true mean NLL per weighted (response) token; its value
  is the usual per-token NLL (exp(L) is the response perplexity) and does not depend on the prompt
  length. Gradients differ from upstream's by the per-batch factor Σ attn / Σ w·attn.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from fairjax.losses.common import batch_count, batch_sum, scatter_positions, token_ce

NORMALIZATIONS = ("upstream", "per_token")


@dataclasses.dataclass(frozen=True)
class BCHparams:
    """transition_weight: weight of non-action positions; normalize: 'upstream' | 'per_token'."""

    transition_weight: float = 0.0
    normalize: Literal["upstream", "per_token"] = "upstream"

    def __post_init__(self):
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"BCHparams.normalize={self.normalize!r}; expected one of {NORMALIZATIONS}")


def action_valid_mask(terminals: jax.Array) -> jax.Array:
    """[B, S] int terminals (pad 1) -> [B, A=S-1] float32 mask of real action slots (m_t = 1 − term_t)."""
    return 1.0 - terminals[:, :-1].astype(jnp.float32)


def action_token_weights(action_idxs: jax.Array,  # [B, A] int positions
                         action_values: jax.Array,  # [B, A] weight of each action slot
                         valid: jax.Array,  # [B, A] 1 = real action slot
                         length: int, transition_weight: float) -> jax.Array:
    """Per-position weights [B, T]: `transition_weight` everywhere, `action_values` at action positions.

    Upstream scatters the first n = argmax(action_idxs)+1 slots of each row; for every well-formed
    row this is exactly the slots with terminal 0, which is what `valid` encodes. (A row with no
    action at all would make upstream write a weight at position 0; we write nothing - fixed.)
    """
    return scatter_positions(action_values.astype(jnp.float32), action_idxs, valid > 0, length,
                             fill=jnp.float32(transition_weight))


def weighted_token_nll(logits: jax.Array,  # [B, T, V] position j predicts token j+1
                       tokens: jax.Array,  # [B, T] int
                       attn_mask: jax.Array,  # [B, T] 1 = real token
                       weights: jax.Array,  # [B, T] weight of the prediction made AT position j
                       normalize: str = "upstream") -> tuple[jax.Array, jax.Array]:
    """Σ_j CE(logits_j, tok_{j+1})·w_j·attn_{j+1} / Z (see module docstring for Z).

    `weights` are treated as constants (stop-gradient).  Returns (loss, Z).
    """
    return weighted_ce_nll(token_ce(logits[:, :-1], tokens[:, 1:]), attn_mask, weights, normalize)


def weighted_ce_nll(ce: jax.Array,  # [B, T-1] CE(logits_j, tok_{j+1})
                    attn_mask: jax.Array,  # [B, T]
                    weights: jax.Array,  # [B, T]
                    normalize: str = "upstream") -> tuple[jax.Array, jax.Array]:
    """`weighted_token_nll` from per-token CE (e.g. `fairjax.losses.vocab.lm_token_ce`, computed
    in vocabulary chunks without [B, T, V] logits). Returns (loss, Z)."""
    w = jax.lax.stop_gradient(weights[:, :-1].astype(jnp.float32))  # [B, T-1]
    nxt = attn_mask[:, 1:].astype(jnp.float32)  # [B, T-1]
    num = batch_sum(jnp.sum(jnp.where(w * nxt != 0, ce * w * nxt, 0.0)))
    if normalize == "upstream":
        z = batch_count(jnp.sum(nxt))
    elif normalize == "per_token":
        z = batch_count(jnp.sum(w * nxt))
    else:
        raise ValueError(f"normalize={normalize!r}; expected one of {NORMALIZATIONS}")
    # Upstream divides by the raw count (NaN on an all-pad batch); we guard against 0.
    return num / jnp.maximum(z, 1e-8 if normalize == "per_token" else 1.0), z


def bc_loss(logits: jax.Array,  # [B, T, V] float logits, or [B, T-1] per-token CE (ce=True)
            batch: dict,  # tokens [B,T], attn_mask [B,T], action_idxs [B,A], terminals [B,S]
            hp: BCHparams = BCHparams(), ce: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Response-only behaviour-cloning NLL. Returns (loss, metrics). With `ce=True` the first
    argument is the next-token CE [B, T-1] (`fairjax.losses.vocab.lm_token_ce`)."""
    tokens, attn_mask = batch["tokens"], batch["attn_mask"]
    valid = action_valid_mask(batch["terminals"])
    w = action_token_weights(batch["action_idxs"], jnp.ones_like(valid), valid, tokens.shape[1],
                             hp.transition_weight)
    if ce:
        loss, z = weighted_ce_nll(logits, attn_mask, w, hp.normalize)
    else:
        loss, z = weighted_token_nll(logits, tokens, attn_mask, w, hp.normalize)
    n_act = batch_count(jnp.sum(valid))
    return loss, {"loss": loss, "token_loss": loss, "n_tokens": z, "n_actions": n_act}
