"""GRPO (DeepSeekMath, Shao et al. 2024) with the DAPO / Dr. GRPO reductions, as trl's GRPOTrainer.

N completions = prompts × G (the G samples of a prompt are contiguous rows), T completion tokens.

    advantage (one per completion):  A_i = (r_i − mean_g r) / (std_g r + 1e-4)    (scale=True;
        std unbiased, as torch.std; scale=False is Dr. GRPO's A_i = r_i − mean_g r)
    ratio per token:   ρ_it = exp(logp_it − old_logp_it)
    surrogate:         ℓ_it = −min(ρ_it A_i, clip(ρ_it, 1 − ε_low, 1 + ε_high) A_i)
    k3 KL (β ≠ 0):     kl_it = exp(ref_it − logp_it) − (ref_it − logp_it) − 1;   ℓ_it += β kl_it
    reduction (`loss_type`, m = mask):
        grpo     mean_i( Σ_t ℓ m / max(Σ_t m, 1) )        (sequence mean, then batch mean)
        bnpo     Σ ℓ m / max(Σ m, 1)                       (token mean over the batch)
        dapo     Σ ℓ m / max(num_items, 1)                 (num_items: completion tokens of the global
                                                            batch; default Σ m, then = bnpo)
        dr_grpo  Σ ℓ m / (N · max_completion_length)       (constant normaliser; default T)

With one update per rollout batch old_logp = stop_gradient(logp): ρ = 1 but ∇ρ = ∇logp, so the
loss gradient is the policy gradient. Every mean / sum / count over the completions is a batch
reduction of `losses.common` (`batch_mean`, `batch_sum`, `batch_count`, `masked_mean`): global
over the batch under `mesh.impl = "shard_map"`, the plain reduction otherwise. The advantages are
computed before the loss, on the whole rollout batch (`group_advantages`; a group's G rows need
not sit on one device).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from fairjax.losses.common import batch_count, batch_mean, batch_sum, masked_mean

LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")
STD_EPS = 1e-4  # trl's constant in (r − μ)/(σ + 1e-4)


@dataclasses.dataclass(frozen=True)
class GRPOHParams:
    """epsilon_low / epsilon_high: clip range of ρ (DAPO clip-higher: epsilon_high = 0.28);
    beta: weight of the k3 KL to the reference (0 = no reference); loss_type: see module doc;
    scale_rewards: divide group-centred rewards by the group std (False = Dr. GRPO);
    max_completion_length: dr_grpo's normaliser (None = the padded T of the batch)."""

    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    beta: float = 0.0
    loss_type: str = "grpo"
    scale_rewards: bool = True
    max_completion_length: Optional[int] = None

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"GRPOHParams.loss_type: expected one of {LOSS_TYPES}, got "
                             f"{self.loss_type!r}")
        if not (0.0 <= self.epsilon_low < 1.0 and self.epsilon_high >= 0.0):
            raise ValueError(f"GRPOHParams: epsilon_low={self.epsilon_low} must be in [0, 1) and "
                             f"epsilon_high={self.epsilon_high} >= 0")
        if self.beta < 0:
            raise ValueError(f"GRPOHParams.beta: expected >= 0, got {self.beta}")


def group_view(x: jax.Array, group_size: int) -> jax.Array:
    """[N] -> [N/G, G]; raises if G does not divide N."""
    n = x.shape[0]
    if group_size < 1 or n % group_size:
        raise ValueError(f"group_size={group_size} does not divide the {n} completions")
    return x.reshape(n // group_size, group_size)


def group_advantages(rewards: jax.Array,  # [N] float, G consecutive rows per prompt
                     group_size: int, scale: bool = True) -> jax.Array:  # -> [N] float32
    """A_i = r_i − mean_g(r) (divided by the unbiased group std + 1e-4 when `scale`).

    G = 1 gives A = 0 (no baseline from siblings)."""
    r = group_view(jnp.asarray(rewards, jnp.float32), group_size)  # [P, G]
    adv = r - jnp.mean(r, axis=1, keepdims=True)
    if scale:
        std = (jnp.std(r, axis=1, keepdims=True, ddof=1) if group_size > 1
               else jnp.zeros_like(adv))
        adv = adv / (std + STD_EPS)
    return adv.reshape(-1)


def k3_kl(logps: jax.Array, ref_logps: jax.Array) -> jax.Array:
    """Per-token k3 estimator of KL(π‖π_ref): exp(ref − logp) − (ref − logp) − 1 (≥ 0). [N, T]."""
    d = ref_logps.astype(jnp.float32) - logps.astype(jnp.float32)
    return jnp.exp(d) - d - 1.0


def clipped_surrogate(log_ratio: jax.Array,  # [N, T] or [N]
                      advantages: jax.Array,  # broadcastable to log_ratio
                      epsilon_low: float, epsilon_high: float
                      ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(−min(ρA, clip(ρ)A), ρ, low-clipped, high-clipped), all shaped like log_ratio.

    low-clipped: ρ < 1 − ε_low with A < 0; high-clipped: ρ > 1 + ε_high with A > 0 (the tokens
    whose gradient the clip removes)."""
    ratio = jnp.exp(log_ratio.astype(jnp.float32))
    adv = jnp.broadcast_to(advantages.astype(jnp.float32), ratio.shape)
    clipped = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    loss = -jnp.minimum(ratio * adv, clipped * adv)
    low = (ratio < 1.0 - epsilon_low) & (adv < 0)
    high = (ratio > 1.0 + epsilon_high) & (adv > 0)
    return loss, ratio, low, high


def reduce_tokens(per_token: jax.Array,  # [N, T]
                  mask: jax.Array,  # [N, T]
                  loss_type: str, *, max_completion_length: Optional[int] = None,
                  num_items: Optional[jax.Array] = None) -> jax.Array:
    """The `loss_type` reduction of the module doc -> scalar (over the global batch under
    shard_map: `num_items`, when given, is already the global count)."""
    m = mask.astype(jnp.float32)
    x = per_token.astype(jnp.float32) * m
    if loss_type == "grpo":
        return batch_mean(jnp.sum(x, -1) / jnp.maximum(jnp.sum(m, -1), 1.0))
    if loss_type == "bnpo":
        return batch_sum(jnp.sum(x)) / jnp.maximum(batch_count(jnp.sum(m)), 1.0)
    if loss_type == "dapo":
        n = (batch_count(jnp.sum(m)) if num_items is None
             else jnp.asarray(num_items, jnp.float32))
        return batch_sum(jnp.sum(x)) / jnp.maximum(n, 1.0)
    if loss_type == "dr_grpo":
        t = per_token.shape[1] if max_completion_length is None else max_completion_length
        return batch_sum(jnp.sum(x)) / (batch_count(jnp.float32(per_token.shape[0])) * t)
    raise ValueError(f"loss_type: expected one of {LOSS_TYPES}, got {loss_type!r}")


def grpo_loss(logps: jax.Array,  # [N, T] log π(a_t) under the policy being trained
              old_logps: jax.Array,  # [N, T] under the sampling policy (no gradient)
              ref_logps: Optional[jax.Array],  # [N, T] under the reference, or None (β must be 0)
              advantages: jax.Array,  # [N] one per completion
              mask: jax.Array,  # [N, T] 1 on completion tokens (through `</a>`)
              *, epsilon_low: float = 0.2, epsilon_high: float = 0.2, beta: float = 0.0,
              loss_type: str = "grpo", max_completion_length: Optional[int] = None,
              num_items: Optional[jax.Array] = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """GRPO loss of the module doc -> (scalar, metrics: kl, clip_ratio/{low,high,region},
    ratio_mean, policy_loss)."""
    if beta != 0.0 and ref_logps is None:
        raise ValueError(f"grpo_loss: beta={beta} needs ref_logps (got None)")
    logps = logps.astype(jnp.float32)
    old = jax.lax.stop_gradient(old_logps).astype(jnp.float32)
    adv = jax.lax.stop_gradient(advantages).astype(jnp.float32)[:, None]  # [N, 1]
    per_token, ratio, low, high = clipped_surrogate(logps - old, adv, epsilon_low, epsilon_high)
    red = lambda x: reduce_tokens(x, mask, loss_type, max_completion_length=max_completion_length,
                                  num_items=num_items)
    metrics = {"policy_loss": jax.lax.stop_gradient(red(per_token))}
    if ref_logps is not None:
        kl = k3_kl(logps, jax.lax.stop_gradient(ref_logps))  # [N, T]
        metrics["kl"] = jax.lax.stop_gradient(masked_mean(kl, mask))
        if beta != 0.0:
            per_token = per_token + beta * kl
    loss = red(per_token)
    sg = jax.lax.stop_gradient
    metrics.update({
        "loss": loss,
        "clip_ratio/low": masked_mean(low, mask),
        "clip_ratio/high": masked_mean(high, mask),
        "clip_ratio/region": masked_mean(low | high, mask),
        "ratio_mean": sg(masked_mean(ratio, mask)),
    })
    return loss, metrics


def grpo_loss_hp(logps, old_logps, ref_logps, advantages, mask, hp: GRPOHParams):
    """`grpo_loss` with the options of a `GRPOHParams`."""
    return grpo_loss(logps, old_logps, ref_logps, advantages, mask, epsilon_low=hp.epsilon_low,
                     epsilon_high=hp.epsilon_high, beta=hp.beta, loss_type=hp.loss_type,
                     max_completion_length=hp.max_completion_length)
