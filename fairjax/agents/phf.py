"""PHF agent: an LM (+ a per-token value head for AWR/RWR) trained with `fairjax.losses.phf`.

params = `{"lm": LM params}` plus, for AWR/RWR with a value head, `"value_head": {"kernel": [d, 1]}`
(upstream `apo/models.py` ValueHead: V_t = −sigmoid(h_t·W), no bias, W zero-initialised so V = −0.5
at init; range (−1, 0) like the reward −score). The head reads the LM's final hidden states; with
`detach_value_head=False` (upstream configs: `is_detached: false`) value-loss gradients also train
the trunk. frozen = {}.

Batch keys:
  tokens [B, T] int32, attn_mask [B, T] (optional; all ones for upstream's unpadded chunks),
  token_scores [B, T] float32: the misalignment score of each token's sentence
  (`fairjax.data.phf_transforms.constant_length_chunks`), needed by unlikelihood / awr / rwr.
Filtering and conditional training are MLE on transformed data (`phf_transforms`); for conditional
training add the control tokens to the tokenizer and resize the LM first.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from fairjax.agents.alol import lm_forward
from fairjax.agents.base import Algorithm, identity_update
from fairjax.losses.phf import PHFHParams, phf_loss

PyTree = Any


@dataclasses.dataclass(frozen=True)
class PHFConfig:
    hparams: PHFHParams = PHFHParams()
    detach_value_head: bool = False
    train_dropout: bool = False


def init_value_head(hidden_size: int) -> dict:
    """Zero-initialised W [d, 1] (upstream)."""
    return {"kernel": jnp.zeros((hidden_size, 1), jnp.float32)}


def apply_value_head(p: dict, hidden: jax.Array) -> jax.Array:
    """V = −sigmoid(h·W).  hidden: [B, T, d] -> [B, T] float32."""
    return -jax.nn.sigmoid(jnp.einsum("btd,do->bt", hidden.astype(jnp.float32), p["kernel"]))


def loss_fn(model: nn.Module, cfg: PHFConfig, params: dict, batch: dict,
            rng: Optional[jax.Array] = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    tokens = batch["tokens"]
    attn = jnp.asarray(batch.get("attn_mask", jnp.ones(tokens.shape, jnp.float32)), jnp.float32)
    logp, hidden = lm_forward(model, params["lm"], tokens, attn, rng, cfg.train_dropout)
    values = None
    if cfg.hparams.needs_values:
        if "value_head" not in params:
            raise KeyError(f"PHF {cfg.hparams.objective}: params have no 'value_head'")
        h = jax.lax.stop_gradient(hidden) if cfg.detach_value_head else hidden
        values = apply_value_head(params["value_head"], h)
    scores = batch.get("token_scores")
    if cfg.hparams.objective in ("unlikelihood", "awr", "rwr") and scores is None:
        raise KeyError(f"PHF {cfg.hparams.objective}: batch needs 'token_scores' [B, T] "
                       f"(keys: {sorted(batch)})")
    return phf_loss(logp, attn[:, 1:] * attn[:, :-1], cfg.hparams, scores, values)


def make_algorithm(model: nn.Module, cfg: PHFConfig, init: Any, hidden_size: int) -> Algorithm:
    """`init(rng) -> LM params` or an LM params tree; `hidden_size` = d of the LM."""

    def init_fn(rng):
        params = {"lm": init(rng) if callable(init) else init}
        if cfg.hparams.needs_values:
            params["value_head"] = init_value_head(hidden_size)
        return params, {}

    return Algorithm(
        name=f"phf_{cfg.hparams.objective}",
        init=init_fn,
        loss=lambda params, frozen, batch, rng: loss_fn(model, cfg, params, batch, rng),
        update_frozen=identity_update,
        policy=lambda params, frozen: (model, params["lm"]),
    )
