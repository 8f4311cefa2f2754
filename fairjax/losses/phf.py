"""Pretraining-with-human-feedback objectives (Korbak et al. 2023) as pure functions.

Semantics follow `tomekkorbak/pretraining-with-human-feedback` `apo/objectives.py` (see
`shared/reference/alol_phf.md`, Part B). Filtering and conditional training are MLE on a transformed
dataset (`fairjax/data/phf_transforms.py`); this file holds MLE, unlikelihood and AWR/RWR.

Alignment. `logprobs[:, j] = log p(tokens[j+1] | tokens[:j+1])` ([B, T-1], as
`fairjax.losses.common.token_logprobs`). Like upstream, the objectives take the UNSHIFTED per-token
`token_scores` [B, T] and `values` [B, T] and shift them here: the score is that of the PREDICTED
token, `token_scores[:, 1:]`, and the value is read at the PREDICTING position, `values[:, :-1]`.
Scores are misalignment scores (higher = worse); the reward is −score. Every token carries the
score of the sentence it belongs to (`phf_transforms.token_scores_from_sentences`).

Upstream averages over all B·(T-1) positions of unpadded constant-length chunks; here a
`loss_mask` [B, T-1] (normally `attn_mask[:, 1:]`) makes padded batches give the same numbers.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from fairjax.losses.common import masked_mean

OBJECTIVES = ("mle", "filtering", "conditional", "unlikelihood", "awr", "rwr")


@dataclasses.dataclass(frozen=True)
class PHFHParams:
    """Hyper-parameters of the PHF objectives (upstream class defaults unless noted).

    objective: one of OBJECTIVES ("filtering"/"conditional" train with MLE on transformed data).
    ul_alpha, ul_threshold: unlikelihood α and score threshold.
    ul_soft_weights: None = upstream behaviour (a falsy threshold, e.g. 0.0, silently selects the
        soft weights a_t = 1 − s_t); True/False forces soft / hard (a_t = 1[s_t <= thr]) weights.
    awr_alpha, awr_beta: AWR α (policy-loss weight; value loss gets 1 − α) and temperature β.
    clip_weight_max: cap of exp(A/β) (upstream 1000).
    use_value_head / fixed_value / clip_value / normalize_advantage: AWR advantage options.
    RWR is AWR with α = 1 (`objective="rwr"` forces it; upstream configs use β = 10).
    """

    objective: str = "mle"
    ul_alpha: float = 1.0
    ul_threshold: float = 0.00078
    ul_soft_weights: Optional[bool] = None
    awr_alpha: float = 0.5
    awr_beta: float = 1.0
    clip_weight_max: float = 1000.0
    use_value_head: bool = True
    fixed_value: Optional[float] = None
    clip_value: bool = False
    normalize_advantage: bool = False

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"PHFHParams.objective: expected one of {OBJECTIVES}, got "
                             f"{self.objective!r}")
        if self.awr_beta <= 0:
            raise ValueError(f"PHFHParams.awr_beta: expected > 0, got {self.awr_beta}")
        if not 0.0 <= self.awr_alpha <= 1.0:
            raise ValueError(f"PHFHParams.awr_alpha: expected in [0, 1], got {self.awr_alpha}")

    @property
    def alpha(self) -> float:
        """The effective AWR α (1 for RWR)."""
        return 1.0 if self.objective == "rwr" else self.awr_alpha

    @property
    def needs_values(self) -> bool:
        return self.objective in ("awr", "rwr") and self.use_value_head and self.fixed_value is None


def mle_loss(logprobs: jax.Array,   # [B, T-1]
             loss_mask: jax.Array,  # [B, T-1]
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Token-mean cross-entropy −mean_t log p(y_t) (upstream `CrossEntropyLoss()`)."""
    loss = masked_mean(-logprobs, loss_mask)
    return loss, {"loss": loss, "nll_per_token": loss}


def unlikelihood_weights(next_scores: jax.Array, threshold: float,
                         soft: Optional[bool]) -> jax.Array:
    """a_t: 1[s_t <= thr] (hard) or 1 − s_t (soft).  next_scores: [B, T-1] -> [B, T-1].

    soft=None reproduces upstream `if self.score_threshold:`: a threshold of 0 means soft weights.
    """
    if soft is None:
        soft = not threshold
    s = next_scores.astype(jnp.float32)
    return (1.0 - s) if soft else (s <= threshold).astype(jnp.float32)


def unlikelihood_loss(logprobs: jax.Array,      # [B, T-1]
                      token_scores: jax.Array,  # [B, T] unshifted per-token scores
                      loss_mask: jax.Array,     # [B, T-1]
                      alpha: float = 1.0,
                      threshold: float = 0.00078,
                      soft: Optional[bool] = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """mean_t[ −a_t log p(y_t) − α(1−a_t) log max(1 − p(y_t), 1e-20) ] (Welleck et al. 2020)."""
    lp = logprobs.astype(jnp.float32)
    a = jax.lax.stop_gradient(unlikelihood_weights(token_scores[:, 1:], threshold, soft))
    log_one_minus_p = jnp.log(jnp.maximum(-jnp.expm1(lp), 1e-20))
    per_tok = -a * lp - alpha * (1.0 - a) * log_one_minus_p
    loss = masked_mean(per_tok, loss_mask)
    return loss, {
        "loss": loss,
        "nll_per_token": masked_mean(-lp, loss_mask),
        "aligned_frac": masked_mean(a, loss_mask),
        "ul_term": masked_mean(-(1.0 - a) * log_one_minus_p, loss_mask),
    }


def awr_loss(logprobs: jax.Array,                # [B, T-1]
             token_scores: jax.Array,            # [B, T] unshifted per-token scores
             values: Optional[jax.Array],        # [B, T] unshifted V(h_t) (None if unused)
             loss_mask: jax.Array,               # [B, T-1]
             hparams: PHFHParams) -> tuple[jax.Array, dict[str, jax.Array]]:
    """AWR (Peng et al. 2019) per token: α·mean(w_t·CE_t) + (1−α)·mean((r_t − V_t)²).

    r_t = −score(y_{t+1}); A_t = r_t − sg(V_t) (or r_t − fixed_value, or r_t without a value head),
    optionally standardised over the masked batch; w_t = min(exp(A_t/β), clip_weight_max).
    V is NOT detached in the value loss (upstream trains the head and, `is_detached: false`, the
    trunk). With α = 1 (RWR) the value term vanishes and a zero-init head stays at −0.5.
    """
    hp = hparams
    alpha = hp.alpha
    m = loss_mask.astype(jnp.float32)
    r = -jax.lax.stop_gradient(token_scores[:, 1:]).astype(jnp.float32)  # [B, T-1] data
    v = None
    if values is not None:
        v = values[:, :-1].astype(jnp.float32)
        if hp.clip_value:
            v = jnp.clip(v, -1.0, 0.0)
    if hp.fixed_value is not None:
        adv = r - hp.fixed_value
    elif hp.use_value_head:
        if v is None:
            raise ValueError("awr_loss: `values` [B, T] are required when use_value_head=True "
                             "and fixed_value is None")
        adv = r - jax.lax.stop_gradient(v)
    else:
        adv = r
    if hp.normalize_advantage:
        mean = masked_mean(adv, m)
        std = jnp.sqrt(masked_mean(jnp.square(adv - mean), m))
        adv = (adv - mean) / (std + 1e-8)
    w = jnp.clip(jnp.exp(adv / hp.awr_beta), 0.0, hp.clip_weight_max)
    ce = -logprobs.astype(jnp.float32)
    policy_loss = masked_mean(w * ce, m)
    loss = alpha * policy_loss
    metrics = {
        "policy_loss": policy_loss,
        "nll_per_token": masked_mean(ce, m),
        "advantage_mean": masked_mean(adv, m),
        "weight_mean": masked_mean(w, m),
        "weight_max": jnp.max(jnp.where(m > 0, w, 0.0)),
        "reward_mean": masked_mean(r, m),
    }
    if v is not None:
        value_loss = masked_mean(jnp.square(r - v), m)
        if alpha < 1.0:
            loss = loss + (1.0 - alpha) * value_loss
        metrics.update({"value_loss": value_loss, "value_mean": masked_mean(v, m)})
    metrics["loss"] = loss
    return loss, metrics


def phf_loss(logprobs: jax.Array,                      # [B, T-1]
             loss_mask: jax.Array,                     # [B, T-1]
             hparams: PHFHParams,
             token_scores: Optional[jax.Array] = None,  # [B, T] (unlikelihood, awr, rwr)
             values: Optional[jax.Array] = None,        # [B, T] (awr, rwr with a value head)
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Dispatch on `hparams.objective`."""
    obj = hparams.objective
    if obj in ("mle", "filtering", "conditional"):
        return mle_loss(logprobs, loss_mask)
    if token_scores is None:
        raise ValueError(f"phf_loss({obj!r}): `token_scores` [B, T] are required")
    if obj == "unlikelihood":
        return unlikelihood_loss(logprobs, token_scores, loss_mask, hparams.ul_alpha,
                                 hparams.ul_threshold, hparams.ul_soft_weights)
    return awr_loss(logprobs, token_scores, values, loss_mask, hparams)
