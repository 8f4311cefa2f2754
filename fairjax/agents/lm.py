"""Plain language-model agent: behaviour cloning (FMs-at-work `BC_LM`) as an `Algorithm`.

params = the LM params (`fairjax.models` tree); frozen = {}.  The loss is
`fairjax.losses.bc.bc_loss` on the model's logits (response-only NLL, upstream normalisation by
default, `BCHparams(normalize="per_token")` for a per-response-token mean).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax

from fairjax.agents.base import Algorithm, identity_update, loss_view, segment_inputs
from fairjax.agents.registry import Objective, config_block, register
from fairjax.losses.bc import BCHparams, bc_loss
from fairjax.losses.vocab import lm_token_ce, resolve_chunk

PyTree = Any


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """hparams: BC loss options; train_dropout: run the LM with dropout in `loss` (upstream trains
    in train() mode; default off = deterministic); vocab_chunk: vocabulary columns per block of
    the chunked LM-head cross-entropy (no [B, T, V] logits kept; 0 = materialise the logits;
    None = $FAIRJAX_VOCAB_CHUNK or 8192, `fairjax.losses.vocab.resolve_chunk`)."""

    hparams: BCHparams = BCHparams()
    train_dropout: bool = False
    vocab_chunk: Optional[int] = None


def loss_fn(model: nn.Module, cfg: LMConfig, params: PyTree, batch: dict,
            rng: Optional[jax.Array] = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """BC loss. batch: tokens, attn_mask [B, T]; action_idxs [B, A]; terminals [B, S]; packed
    rows (`fairjax.data.packing`) also segment_ids, positions [B, T]."""
    det = not (cfg.train_dropout and rng is not None)
    chunk = resolve_chunk(cfg.vocab_chunk)
    lean = chunk > 0
    out = model.apply({"params": params}, batch["tokens"], batch["attn_mask"], deterministic=det,
                      rngs=None if det else {"dropout": rng}, compute_logits=not lean,
                      **segment_inputs(batch))
    batch = loss_view(batch)  # packed rows: no next-token target across episodes
    if lean:
        h = out.hidden_states
        ce = lm_token_ce(params, h, batch["tokens"], h.dtype, chunk)  # [B, T-1]
        return bc_loss(ce, batch, cfg.hparams, ce=True)
    return bc_loss(out.logits, batch, cfg.hparams)


def make_algorithm(model: nn.Module, cfg: LMConfig, init: Any) -> Algorithm:
    """`init(rng) -> params` (e.g. random init) or an already built params tree."""
    init_fn = (lambda rng: (init(rng), {})) if callable(init) else (lambda rng: (init, {}))
    return Algorithm(
        name="bc",
        init=init_fn,
        loss=lambda params, frozen, batch, rng: loss_fn(model, cfg, params, batch, rng),
        update_frozen=identity_update,
        policy=lambda params, frozen: (model, params),
    )


# ----------------------------------------------------------------------------- config wiring
def from_config(cfg: Any) -> LMConfig:
    """`LMConfig` from the `bc` block (transition_weight, normalize -> BCHparams; train_dropout)."""
    return config_block(cfg, "bc", LMConfig, hparams=BCHparams)


def build(cfg: Any, module: nn.Module, model_config, base_params, policy) -> Algorithm:
    return make_algorithm(module, from_config(cfg), policy)


# BC imitates the postings: no reward is read; its batches are the plain layout (packable).
OBJECTIVE = register(Objective(name="bc", agent_config=from_config, build=build, packable=True,
                               trains_on_reward=False))
