"""A-LoL ("Leftover Lunch", Baheti et al. 2024) and its reward-weighted baselines, as pure functions.

Semantics follow `abaheti95/LoL-RL` (see `shared/reference/alol_phf.md`, Part A). Notation:
`NLL(y) = -Σ_t m_t log π(y_t | x, y_<t)` summed (not averaged) over the response tokens, `sg` =
stop-gradient. Every variant returns `mean_b(per_example_loss_b)`:

| algorithm        | per-example loss                                        | ratio                       |
|------------------|---------------------------------------------------------|-----------------------------|
| `nll`            | NLL_π(y)                                                | -                           |
| `wbc`            | R · NLL_π(y)                                            | -                           |
| `r_gold`         | R · Σ_t m_t · sg(max(π(y_t), u)) · NLL_t                 | GOLD token weight, u = 0.1  |
| `r_lol`          | R · ρ_seq · NLL_π(y)                                    | sequence ratio, clamped     |
| `a_lol`          | A⁺ · ρ_seq · NLL_π(y)                                   | sequence ratio, clamped     |
| `a_lol_seq`      | A⁺ · Σ_t m_t · ρ_t · NLL_t                              | per-token ratio, clamped    |
| `a_lol_ref_free` | A · NLL_π(y)   (A⁺ with `clamp_ref_free_advantage`)     | 1                           |
| `a_lol_kl`       | A⁺ · NLL_π(y) + β_KL · (NLL_ref(y) − NLL_π(y))          | 1                           |

(The upstream naming is counter-intuitive: `a_lol_seq` is the PER-TOKEN ratio variant.)

* ρ_seq = exp(Σ_t m_t (sg(log π_t) − log π_ref,t)) = π(y|x)/π_ref(y|x); ρ_t the per-token analogue.
  Both are fully detached and then plainly clamped to [1−ε, 1+ε] (ε = `ppo_clip`; `None` = no clamp).
  This is NOT PPO's min(ρA, clip(ρ)A): the gradient is clip(ρ)·A·∇log π (weighted BC).
  Upstream quirk made explicit: the HH script skips the sequence-ratio clamp when ppo_clip == 0 but
  applies the token-ratio clamp; here `ppo_clip=0.0` always clamps (ratio ≡ 1), `None` never does.
* A = R − V(x) (V: the frozen value head fit on the reference policy's own generations, or a
  precomputed `advantages` array); A⁺ = max(A, 0). R and A carry no gradient.
* KL: upstream HH runs `a_lol`/`r_lol` with `kl_beta > 0` only together with ppo_clip = 0 and then uses
  ratio 1 plus the KL term; here `kl_beta > 0` on `a_lol` or `r_lol` does the same (ratio ≡ 1), and
  `a_lol_kl` is that objective for A⁺. The KL term is the single-sample estimate on the DATASET
  response, so its gradient is −β∇NLL_π: the total gradient is (A⁺ − β)∇NLL_π.
* Rewards: `reward_transform="sigmoid"` reproduces the HH normalisation R = σ(RM logit) (also apply
  it to the value-head targets); `"none"` keeps raw rewards (general tasks: the unnormalised sum of
  reward components).

All inputs are log-probabilities (≤ 0), aligned with `fairjax.losses.common.token_logprobs`:
column j scores token j+1.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from fairjax.losses.common import batch_mean, masked_mean

ALGORITHMS = ("nll", "wbc", "r_gold", "r_lol", "a_lol", "a_lol_ref_free", "a_lol_seq", "a_lol_kl")
REWARD_TRANSFORMS = ("none", "sigmoid")


@dataclasses.dataclass(frozen=True)
class ALoLHParams:
    """Hyper-parameters of the A-LoL family.

    algorithm: one of ALGORITHMS.
    ppo_clip: ε of the detached clamp [1−ε, 1+ε] of the importance ratio; None = no clamp
        (HH default 0.9; general-script default None).
    kl_beta: β of the KL term (a_lol_kl; also accepted by a_lol/r_lol, see module doc).
    gold_min_prob: u of the GOLD token weight max(π(y_t), u) (r_gold; upstream 0.1).
    clamp_ref_free_advantage: a_lol_ref_free uses A⁺ instead of A (general script: True; HH: False).
    reward_transform: "none" | "sigmoid" applied to `rewards` before use.
    """

    algorithm: str = "a_lol"
    ppo_clip: Optional[float] = 0.9
    kl_beta: float = 0.0
    gold_min_prob: float = 0.1
    clamp_ref_free_advantage: bool = False
    reward_transform: str = "none"

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"ALoLHParams.algorithm: expected one of {ALGORITHMS}, got "
                             f"{self.algorithm!r}")
        if self.reward_transform not in REWARD_TRANSFORMS:
            raise ValueError(f"ALoLHParams.reward_transform: expected one of {REWARD_TRANSFORMS}, "
                             f"got {self.reward_transform!r}")
        if self.ppo_clip is not None and not 0.0 <= self.ppo_clip <= 1.0:
            raise ValueError(f"ALoLHParams.ppo_clip: expected None or a value in [0, 1], got "
                             f"{self.ppo_clip}")
        if self.kl_beta < 0:
            raise ValueError(f"ALoLHParams.kl_beta: expected >= 0, got {self.kl_beta}")
        if self.kl_beta > 0 and self.algorithm not in ("a_lol", "r_lol", "a_lol_kl"):
            raise ValueError(f"ALoLHParams.kl_beta={self.kl_beta} is only used by a_lol, r_lol and "
                             f"a_lol_kl, not {self.algorithm!r}")

    @property
    def needs_reference(self) -> bool:
        """Whether the loss reads reference log-probs (ratio or KL term)."""
        return (self.algorithm in ("r_lol", "a_lol", "a_lol_seq")
                or (self.algorithm == "a_lol_kl" and self.kl_beta > 0))

    @property
    def needs_advantage(self) -> bool:
        """Whether the loss uses A = R − V(x) (i.e. a value estimate)."""
        return self.algorithm.startswith("a_lol")


# ------------------------------------------------------------------------------- building blocks
def transform_rewards(rewards: jax.Array, kind: str) -> jax.Array:
    """Upstream reward normalisation. rewards: [...] -> [...] float32 ("sigmoid" = HH σ(logit))."""
    rewards = jnp.asarray(rewards, jnp.float32)
    if kind == "sigmoid":
        return jax.nn.sigmoid(rewards)
    if kind == "none":
        return rewards
    raise ValueError(f"transform_rewards: kind must be one of {REWARD_TRANSFORMS}, got {kind!r}")


def sequence_nll(logprobs: jax.Array, mask: jax.Array) -> jax.Array:
    """NLL(y) = −Σ_t m_t log π_t.  logprobs, mask: [B, T-1] -> [B] float32."""
    return -jnp.sum(logprobs.astype(jnp.float32) * mask.astype(jnp.float32), axis=-1)


def clamp_ratio(ratio: jax.Array, ppo_clip: Optional[float]) -> jax.Array:
    """Plain clamp to [1−ε, 1+ε] (identity when ε is None).  ratio: any shape."""
    if ppo_clip is None:
        return ratio
    return jnp.clip(ratio, 1.0 - ppo_clip, 1.0 + ppo_clip)


def sequence_ratio(policy_logprobs: jax.Array,  # [B, T-1]
                   ref_logprobs: jax.Array,     # [B, T-1]
                   mask: jax.Array,             # [B, T-1]
                   ppo_clip: Optional[float]) -> tuple[jax.Array, jax.Array]:
    """ρ_seq = exp(NLL_ref − sg(NLL_π)), detached, then clamped.  Returns (clamped [B], raw [B])."""
    m = mask.astype(jnp.float32)
    log_ratio = jnp.sum((jax.lax.stop_gradient(policy_logprobs).astype(jnp.float32)
                         - jax.lax.stop_gradient(ref_logprobs).astype(jnp.float32)) * m, axis=-1)
    raw = jnp.exp(log_ratio)
    return clamp_ratio(raw, ppo_clip), raw


def token_ratio(policy_logprobs: jax.Array,  # [B, T-1]
                ref_logprobs: jax.Array,     # [B, T-1]
                mask: jax.Array,             # [B, T-1]
                ppo_clip: Optional[float]) -> tuple[jax.Array, jax.Array]:
    """ρ_t = exp(sg(log π_t) − log π_ref,t)·m_t, detached, clamped per token, re-masked.

    Returns (clamped [B, T-1], raw [B, T-1]); both are 0 at masked positions.
    """
    m = mask.astype(jnp.float32)
    log_ratio = (jax.lax.stop_gradient(policy_logprobs).astype(jnp.float32)
                 - jax.lax.stop_gradient(ref_logprobs).astype(jnp.float32))
    raw = jnp.exp(log_ratio * m) * m  # exp(0) at masked slots, never overflows there
    return clamp_ratio(raw, ppo_clip) * m, raw


def gold_weights(policy_logprobs: jax.Array, mask: jax.Array, min_prob: float) -> jax.Array:
    """GOLD weight sg(max(π(y_t), u))·m_t.  policy_logprobs, mask: [B, T-1] -> [B, T-1]."""
    p = jnp.exp(jax.lax.stop_gradient(policy_logprobs).astype(jnp.float32))
    return jnp.maximum(p, min_prob) * mask.astype(jnp.float32)


def kl_estimate(policy_logprobs: jax.Array, ref_logprobs: jax.Array, mask: jax.Array) -> jax.Array:
    """Single-sample log π(y|x) − log π_ref(y|x) = NLL_ref − NLL_π on the dataset response.

    policy_logprobs, ref_logprobs, mask: [B, T-1] -> [B]; gradient flows through the policy only.
    """
    return (sequence_nll(jax.lax.stop_gradient(ref_logprobs), mask)
            - sequence_nll(policy_logprobs, mask))


# --------------------------------------------------------------------------- per-variant losses
# Each returns the per-example loss [B]; `alol_loss` averages and adds metrics.
def nll(policy_logprobs, mask):
    """NLL_π(y).  policy_logprobs, mask: [B, T-1] -> [B]."""
    return sequence_nll(policy_logprobs, mask)


def wbc(policy_logprobs, mask, rewards):
    """R·NLL_π(y).  policy_logprobs, mask: [B, T-1]; rewards: [B] -> [B]."""
    return jax.lax.stop_gradient(rewards) * sequence_nll(policy_logprobs, mask)


def r_gold(policy_logprobs, mask, rewards, min_prob: float = 0.1):
    """R·Σ_t m_t sg(max(π_t, u))·NLL_t.  policy_logprobs, mask: [B, T-1]; rewards: [B] -> [B]."""
    w = gold_weights(policy_logprobs, mask, min_prob)
    return jax.lax.stop_gradient(rewards) * sequence_nll(policy_logprobs, w)


def r_lol(policy_logprobs, ref_logprobs, mask, rewards, ppo_clip=0.9):
    """R·clamp(ρ_seq)·NLL_π(y).  *_logprobs, mask: [B, T-1]; rewards: [B] -> [B]."""
    rho, _ = sequence_ratio(policy_logprobs, ref_logprobs, mask, ppo_clip)
    return jax.lax.stop_gradient(rewards) * rho * sequence_nll(policy_logprobs, mask)


def a_lol(policy_logprobs, ref_logprobs, mask, advantages, ppo_clip=0.9):
    """A⁺·clamp(ρ_seq)·NLL_π(y).  *_logprobs, mask: [B, T-1]; advantages: [B] -> [B]."""
    rho, _ = sequence_ratio(policy_logprobs, ref_logprobs, mask, ppo_clip)
    return _pos(advantages) * rho * sequence_nll(policy_logprobs, mask)


def a_lol_seq(policy_logprobs, ref_logprobs, mask, advantages, ppo_clip=0.9):
    """A⁺·Σ_t m_t clamp(ρ_t) NLL_t (per-TOKEN ratio).  *_logprobs, mask: [B, T-1]; adv: [B] -> [B]."""
    rho_t, _ = token_ratio(policy_logprobs, ref_logprobs, mask, ppo_clip)
    return _pos(advantages) * sequence_nll(policy_logprobs, rho_t)


def a_lol_ref_free(policy_logprobs, mask, advantages, clamp: bool = False):
    """A·NLL_π(y) (A⁺ when `clamp`).  policy_logprobs, mask: [B, T-1]; advantages: [B] -> [B]."""
    a = _pos(advantages) if clamp else jax.lax.stop_gradient(advantages)
    return a * sequence_nll(policy_logprobs, mask)


def a_lol_kl(policy_logprobs, ref_logprobs, mask, advantages, kl_beta=0.0):
    """A⁺·NLL_π(y) + β(NLL_ref − NLL_π).  *_logprobs, mask: [B, T-1]; advantages: [B] -> [B]."""
    per_ex = _pos(advantages) * sequence_nll(policy_logprobs, mask)
    if kl_beta:  # β = 0 needs no reference model
        per_ex = per_ex + kl_beta * kl_estimate(policy_logprobs, ref_logprobs, mask)
    return per_ex


def _pos(a: jax.Array) -> jax.Array:
    return jnp.maximum(jax.lax.stop_gradient(a).astype(jnp.float32), 0.0)


# ------------------------------------------------------------------------------------ dispatch
def alol_loss(policy_logprobs: jax.Array,        # [B, T-1] log π(y_{t+1} | ·)
              ref_logprobs: Optional[jax.Array],  # [B, T-1] frozen reference (None if unused)
              response_mask: jax.Array,           # [B, T-1] 1 = scored response token
              rewards: jax.Array,                 # [B] sequence rewards (before reward_transform)
              values: Optional[jax.Array],        # [B] V(x) (None if unused / advantages given)
              hparams: ALoLHParams,
              advantages: Optional[jax.Array] = None,  # [B] precomputed A (overrides R − V)
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean over the batch of the `hparams.algorithm` per-example loss (table in module doc)."""
    hp = hparams
    alg = hp.algorithm
    mask = response_mask.astype(jnp.float32)
    R = jax.lax.stop_gradient(transform_rewards(rewards, hp.reward_transform))
    if hp.needs_reference and ref_logprobs is None:
        raise ValueError(f"alol_loss({alg!r}): ref_logprobs [B, T-1] are required")
    if hp.needs_advantage:
        if advantages is None:
            if values is None:
                raise ValueError(f"alol_loss({alg!r}): give `values` [B] (V(x)) or `advantages` [B]")
            advantages = R - jnp.asarray(values, jnp.float32)
        A = jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32))
    else:
        A = None
    kl_mode = hp.kl_beta > 0 and alg in ("a_lol", "r_lol")  # upstream HH: ratio ≡ 1 plus KL
    metrics: dict[str, jax.Array] = {}

    if alg == "nll":
        per_ex = nll(policy_logprobs, mask)
    elif alg == "wbc":
        per_ex = wbc(policy_logprobs, mask, R)
    elif alg == "r_gold":
        per_ex = r_gold(policy_logprobs, mask, R, hp.gold_min_prob)
    elif alg == "a_lol_ref_free":
        per_ex = a_lol_ref_free(policy_logprobs, mask, A, hp.clamp_ref_free_advantage)
    elif alg == "a_lol_kl" or kl_mode:
        if alg == "r_lol":  # R is a reward: not clamped at 0
            per_ex = (R * sequence_nll(policy_logprobs, mask)
                      + hp.kl_beta * kl_estimate(policy_logprobs, ref_logprobs, mask))
        else:
            per_ex = a_lol_kl(policy_logprobs, ref_logprobs, mask, A, hp.kl_beta)
    elif alg == "r_lol":
        per_ex = r_lol(policy_logprobs, ref_logprobs, mask, R, hp.ppo_clip)
    elif alg == "a_lol":
        per_ex = a_lol(policy_logprobs, ref_logprobs, mask, A, hp.ppo_clip)
    elif alg == "a_lol_seq":
        per_ex = a_lol_seq(policy_logprobs, ref_logprobs, mask, A, hp.ppo_clip)
    else:  # pragma: no cover - guarded by ALoLHParams
        raise ValueError(alg)

    loss = batch_mean(per_ex)
    if alg in ("r_lol", "a_lol") and not kl_mode:  # (recomputed ratios are CSE'd under jit)
        rho, raw = sequence_ratio(policy_logprobs, ref_logprobs, mask, hp.ppo_clip)
        metrics.update(_ratio_metrics(rho, raw, jnp.ones_like(raw), hp.ppo_clip))
    elif alg == "a_lol_seq":
        rho_t, raw_t = token_ratio(policy_logprobs, ref_logprobs, mask, hp.ppo_clip)
        metrics.update(_ratio_metrics(rho_t, raw_t, mask, hp.ppo_clip))
    seq_nll = sequence_nll(jax.lax.stop_gradient(policy_logprobs), mask)
    metrics.update({
        "loss": loss,
        "nll": jnp.mean(seq_nll),
        "nll_per_token": masked_mean(-jax.lax.stop_gradient(policy_logprobs), mask),
        "reward_mean": jnp.mean(R),
        "response_tokens": jnp.mean(jnp.sum(mask, axis=-1)),
    })
    if A is not None:
        metrics.update({"advantage_mean": jnp.mean(A), "advantage_pos_frac": jnp.mean(A > 0)})
    if values is not None and hp.needs_advantage:
        metrics["value_mean"] = jnp.mean(jnp.asarray(values, jnp.float32))
    if ref_logprobs is not None and hp.needs_reference:
        metrics["kl"] = jnp.mean(kl_estimate(jax.lax.stop_gradient(policy_logprobs),
                                             ref_logprobs, mask))
    return loss, metrics


def _ratio_metrics(rho, raw, mask, ppo_clip) -> dict[str, jax.Array]:
    """Mean clamped/raw ratio and the clamped fraction over the (masked) entries."""
    out = {"ratio_mean": masked_mean(rho, mask), "ratio_raw_mean": masked_mean(raw, mask)}
    if ppo_clip is not None:
        clipped = (raw < 1.0 - ppo_clip) | (raw > 1.0 + ppo_clip)
        out["ratio_clip_frac"] = masked_mean(clipped.astype(jnp.float32), mask)
    return out
