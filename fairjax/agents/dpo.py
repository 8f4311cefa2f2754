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

from fairjax.agents.base import Algorithm, identity_update, init_with_reference, lm_forward
from fairjax.agents.registry import Objective, choice, config_block, register
from fairjax.data.config import Batching, DataConfig
from fairjax.data.episodes import iterators
from fairjax.data.jobs import JobsDataset
from fairjax.data.pairs import layout_pairs, pair_collate, pairs_from_postings, read_pairs
from fairjax.errors import ConfigError
from fairjax.losses.dpo import DPOHParams, dpo_loss
from fairjax.rewards.registry import build_reward_scorer, reward_config
from fairjax.rewards.training import default_pool, reward_cache_dir, source_paths

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
        ref = sequence_logps(model, frozen["ref"], tokens, attn, resp)  # frozen: no gradient
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


# ----------------------------------------------------------------------------- config wiring
def from_config(cfg: Any) -> DPOConfig:
    """`DPOConfig` from the `dpo` block; pairs / eval_pairs / min_margin are read by the data hook."""
    choice("dpo.loss_type", cfg.dpo.loss_type, ("sigmoid", "ipo"))
    if not 0.0 <= cfg.dpo.label_smoothing < 0.5:
        raise ConfigError(f"config.dpo.label_smoothing={cfg.dpo.label_smoothing}; "
                          "expected in [0, 0.5)")
    return config_block(cfg, "dpo", DPOConfig, hparams=DPOHParams,
                        ignore=("pairs", "eval_pairs", "min_margin"))


def build(cfg: Any, module: nn.Module, model_config, base_params, policy) -> Algorithm:
    return make_algorithm(module, from_config(cfg), policy)


def build_data(cfg: Any, data: DataConfig, batching: Batching, tok, train_path: str, eval_path,
               trunc, reference: Optional[dict] = None):
    """DPO batches (postings read with the typed `data` block; `batching`: rows per step, seed): `dpo.pairs` JSONL ({prompt, chosen, rejected}), or reward-ranked
    (posting, gender-coded counterfactual) pairs of the job data (`data.pairs.pairs_from_postings`),
    ranked by the configured reward (`reward.scorer` with its `reward.*` settings; candidate pools
    `reward.pool`, default: the candidates beside the source train file, not its rewarded copy)."""
    scorer = None

    def pairs(path, explicit):
        nonlocal scorer
        if explicit:
            return read_pairs(path)
        if scorer is None:
            scorer = pair_scorer(cfg, train_path, (reference or {}).get("run_dir"))
        ds = JobsDataset.from_file(path, text_field=data.text_field, on_error=data.on_error)
        return pairs_from_postings([e.prompt for e in ds], [e.response for e in ds], scorer,
                                   cfg.dpo.min_margin)

    explicit = bool(cfg.dpo.pairs)
    train = layout_pairs(tok, pairs(cfg.dpo.pairs or train_path, explicit), trunc)
    if len(train) < batching.batch_size:
        raise ConfigError(f"dpo: only {len(train)} preference pairs from "
                          f"{cfg.dpo.pairs or train_path} (< batch_size {batching.batch_size})")
    ev = None
    ev_src = cfg.dpo.eval_pairs or (None if explicit else eval_path)
    if ev_src:
        ev = layout_pairs(tok, pairs(ev_src, bool(cfg.dpo.eval_pairs)), trunc) or None
    return iterators(data, batching, train, ev, buckets=data.buckets,
                     collate_fn=pair_collate(tok.pad_id, data.buckets))


def count_tokens(batch) -> int:
    """Tokens a pair batch trains on: Σ chosen_attn_mask + Σ rejected_attn_mask."""
    import numpy as np

    return int(sum(float(np.asarray(batch[p + "attn_mask"]).sum())
                   for p in ("chosen_", "rejected_") if p + "attn_mask" in batch))


def pair_scorer(cfg: Any, train_path: str, run_dir=None):
    """The scorer that ranks derived pairs: `reward.scorer` as configured (the reward named in
    reward_spec.json); the default pool sits beside the source data of `train_path`."""
    import os

    reward = reward_config(cfg.reward)
    if not reward.scorer:
        raise ConfigError("dpo pairs derived from postings are ranked by config.reward.scorer, "
                          "which is empty: set a scorer (e.g. diversity) or give config.dpo.pairs")
    src = source_paths(run_dir, train_path, None)[0] if run_dir is not None else train_path
    try:
        return build_reward_scorer(reward, default_pool(src),
                                   cache_dir=os.path.join(reward_cache_dir(reward), "pools"))
    except ValueError as e:
        raise ConfigError(f"dpo pairs from postings: {e}") from e


OBJECTIVE = register(Objective(name="dpo", agent_config=from_config, build=build,
                               build_data=build_data, count_tokens=count_tokens,
                               needs_reference=True,  # run_dir: the pool beside the source data
                               no_pack_reason="its batches are chosen/rejected pairs, not episodes"))
