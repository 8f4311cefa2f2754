"""RLOO (Ahmadian et al. 2024, "Back to Basics"): REINFORCE with a leave-one-out baseline.

N completions = prompts × G (G ≥ 2 contiguous rows per prompt), T completion tokens, m = mask.

    KL in the reward (β ≠ 0, k1, sequence sum):  r_i ← r_i − β Σ_t m_it (old_logp_it − ref_logp_it)
    baseline:   b_i = (Σ_{j∈g(i)} r_j − r_i) / (G − 1);     A_i = r_i − b_i
    optional:   A ← (A − mean A) / (std A + 1e-4)  over the batch (unbiased std)
    ratio per sequence:  log ρ_i = Σ_t m_it (logp_it − old_logp_it)
    loss = mean_i −min(ρ_i A_i, clip(ρ_i, 1 − ε_low, 1 + ε_high) A_i)

The clipped surrogate is shared with GRPO (`losses.grpo.clipped_surrogate`). The loss's means
over the completions are `losses.common.batch_mean` (global under `mesh.impl = "shard_map"`);
the baseline and the optional whitening are computed before the loss on the whole rollout batch.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from fairjax.losses.common import batch_mean
from fairjax.losses.grpo import STD_EPS, clipped_surrogate, group_view


@dataclasses.dataclass(frozen=True)
class RLOOHParams:
    """epsilon_low / epsilon_high: clip range of the sequence ratio; beta: k1 KL penalty folded
    into the reward; normalize_advantages: whiten A over the batch."""

    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    beta: float = 0.0
    normalize_advantages: bool = False

    def __post_init__(self):
        if not (0.0 <= self.epsilon_low < 1.0 and self.epsilon_high >= 0.0):
            raise ValueError(f"RLOOHParams: epsilon_low={self.epsilon_low} must be in [0, 1) and "
                             f"epsilon_high={self.epsilon_high} >= 0")
        if self.beta < 0:
            raise ValueError(f"RLOOHParams.beta: expected >= 0, got {self.beta}")


def kl_penalized_rewards(rewards: jax.Array,  # [N]
                         old_logps: jax.Array,  # [N, T]
                         ref_logps: jax.Array,  # [N, T]
                         mask: jax.Array,  # [N, T]
                         beta: float) -> jax.Array:  # -> [N]
    """r − β Σ_t m (old_logp − ref_logp) (the sequence k1 KL folded into the reward)."""
    kl = jnp.sum((old_logps - ref_logps).astype(jnp.float32) * mask.astype(jnp.float32), -1)
    return jnp.asarray(rewards, jnp.float32) - beta * kl


def rloo_advantages(rewards: jax.Array,  # [N], G consecutive rows per prompt
                    group_size: int, normalize: bool = False) -> jax.Array:  # -> [N] float32
    """A_i = r_i − (Σ_g r − r_i)/(G − 1); optionally whitened over the batch (module doc)."""
    if group_size < 2:
        raise ValueError(f"RLOO needs group_size >= 2 (a leave-one-out baseline), got {group_size}")
    r = group_view(jnp.asarray(rewards, jnp.float32), group_size)  # [P, G]
    baseline = (jnp.sum(r, axis=1, keepdims=True) - r) / (group_size - 1)
    adv = (r - baseline).reshape(-1)
    if normalize:
        adv = (adv - jnp.mean(adv)) / (jnp.std(adv, ddof=1) + STD_EPS)
    return adv


def rloo_loss(logps: jax.Array,  # [N, T] under the policy being trained
              old_logps: jax.Array,  # [N, T] under the sampling policy (no gradient)
              advantages: jax.Array,  # [N]
              mask: jax.Array,  # [N, T]
              *, epsilon_low: float = 0.2, epsilon_high: float = 0.2,
              ref_logps: Optional[jax.Array] = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Sequence-ratio clipped REINFORCE loss (module doc) -> (scalar, metrics). `ref_logps` only
    feeds the logged k1 KL (the penalty itself is in the reward)."""
    m = mask.astype(jnp.float32)
    old = jax.lax.stop_gradient(old_logps).astype(jnp.float32)
    log_ratio = jnp.sum((logps.astype(jnp.float32) - old) * m, -1)  # [N]
    adv = jax.lax.stop_gradient(advantages).astype(jnp.float32)
    per_seq, ratio, low, high = clipped_surrogate(log_ratio, adv, epsilon_low, epsilon_high)
    loss = batch_mean(per_seq)
    sg = jax.lax.stop_gradient
    metrics = {
        "loss": loss, "policy_loss": sg(loss),
        "clip_ratio/low": batch_mean(low),
        "clip_ratio/high": batch_mean(high),
        "clip_ratio/region": batch_mean(low | high),
        "ratio_mean": sg(batch_mean(ratio)),
    }
    if ref_logps is not None:
        kl = jnp.sum((sg(logps).astype(jnp.float32) - ref_logps.astype(jnp.float32)) * m, -1)
        metrics["kl_seq"] = batch_mean(kl)
    return loss, metrics


def rloo_loss_hp(logps, old_logps, advantages, mask, hp: RLOOHParams, ref_logps=None):
    """`rloo_loss` with the options of an `RLOOHParams`."""
    return rloo_loss(logps, old_logps, advantages, mask, epsilon_low=hp.epsilon_low,
                     epsilon_high=hp.epsilon_high, ref_logps=ref_logps)
