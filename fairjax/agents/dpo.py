"""DPO agent: policy LM + frozen reference LM, loss `fairjax.losses.dpo.dpo_loss`.

params = LM params; frozen = `{"ref": reference LM params}` (a copy of the initial policy by
default), or `{}` with precomputed reference log-probs in the batch / `reference_free=True`.

Batch keys (`fairjax.data.layout.collate_pairs` builds them; chosen and rejected share T):
  chosen_tokens [B, T] int32, chosen_attn_mask [B, T], chosen_response_mask [B, T] (1 at the response
  tokens and `</a>` whose log-probs are summed), and the same three `rejected_*` keys;
  optional chosen_ref_logps [B], rejected_ref_logps [B]: precomputed Σ log π_ref over the response.
Chosen and rejected rows run through the LM in ONE forward pass ([2B, T]).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from fairjax.agents.alol import init_with_reference, lm_forward
from fairjax.agents.base import Algorithm, identity_update
from fairjax.losses.dpo import DPOHParams, dpo_loss

PyTree = Any
_PAIR_KEYS = ("tokens", "attn_mask", "response_mask")


@dataclasses.dataclass(frozen=True)
class DPOConfig:
    hparams: DPOHParams = DPOHParams()
    train_dropout: bool = False


def _stack_pairs(batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
    """tokens, attn_mask, response_mask, each [2B, T] (chosen rows first)."""
    out = []
    for key in _PAIR_KEYS:
        for p in ("chosen_", "rejected_"):
            if p + key not in batch:
                raise KeyError(f"DPO batch is missing {p + key!r} [B, T] (keys: {sorted(batch)})")
        c, r = jnp.asarray(batch["chosen_" + key]), jnp.asarray(batch["rejected_" + key])
        if c.shape != r.shape:
            raise ValueError(f"DPO batch: chosen_{key} {c.shape} and rejected_{key} {r.shape} must "
                             "have the same shape (collate pairs to one length)")
        out.append(jnp.concatenate([c, r], axis=0))
    return tuple(out)


def sequence_logps(model: nn.Module, params: PyTree, tokens, attn, resp, rng=None,
                   dropout: bool = False) -> jax.Array:
    """Σ_t log π over the response tokens.  tokens, attn, resp: [N, T] -> [N]."""
    logp, _ = lm_forward(model, params, tokens, attn, rng, dropout)
    m = resp[:, 1:].astype(jnp.float32) * attn[:, 1:].astype(jnp.float32)
    return jnp.sum(logp * m, axis=-1)


def loss_fn(model: nn.Module, cfg: DPOConfig, params: PyTree, frozen: dict, batch: dict,
            rng: Optional[jax.Array] = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    tokens, attn, resp = _stack_pairs(batch)
    B = tokens.shape[0] // 2
    pol = sequence_logps(model, params, tokens, attn, resp, rng, cfg.train_dropout)
    if cfg.hparams.reference_free:
        ref = jnp.zeros_like(pol)
    elif "chosen_ref_logps" in batch and "rejected_ref_logps" in batch:
        ref = jnp.concatenate([jnp.asarray(batch["chosen_ref_logps"], jnp.float32),
                               jnp.asarray(batch["rejected_ref_logps"], jnp.float32)])
    elif "ref" in frozen:
        ref = sequence_logps(model, jax.lax.stop_gradient(frozen["ref"]), tokens, attn, resp)
    else:
        raise KeyError("DPO: frozen has no 'ref' params and the batch no 'chosen_ref_logps'/"
                       "'rejected_ref_logps' [B] (or set reference_free=True)")
    return dpo_loss(pol[:B], pol[B:], ref[:B], ref[B:], cfg.hparams)


def make_algorithm(model: nn.Module, cfg: DPOConfig, init: Any, *,
                   ref_params: Optional[PyTree] = None, keep_reference: bool = True) -> Algorithm:
    """`init(rng) -> params` or a params tree; the reference defaults to a copy of the initial
    policy (set `keep_reference=False` with precomputed ref log-probs or reference_free)."""

    return Algorithm(
        name="dpo",
        init=init_with_reference(init, keep_reference and not cfg.hparams.reference_free, ref_params),
        loss=lambda params, frozen, batch, rng: loss_fn(model, cfg, params, frozen, batch, rng),
        update_frozen=identity_update,
        policy=lambda params, frozen: (model, params),
    )
