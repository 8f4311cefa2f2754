"""PPO for language models (Schulman et al. 2017; the InstructGPT / trl-PPO recipe) with GAE.

N completions, T completion tokens, m = mask [N, T] (1 through `</a>`, the FMs-at-work action
layout: the completion's last real token carries the scalar reward).

    per-token reward:   r_t = −β (old_logp_t − ref_logp_t)  (+ R on the last real token)
    GAE (Schulman et al. 2016, eq. 16), V past the last real token = 0:
        δ_t = r_t + γ V_{t+1} − V_t,   A_t = δ_t + γλ A_{t+1},   returns R_t = A_t + V_t
    advantages whitened over the batch's real tokens: (A − mean) / sqrt(var + 1e-8)
    policy:  ℓ^π_t = −min(ρ_t A_t, clip(ρ_t, 1 − ε, 1 + ε) A_t),   ρ_t = exp(logp_t − old_logp_t)
    value:   ℓ^V_t = ½ max((V_t − R_t)², (clip(V_t, V^old_t − ε_v, V^old_t + ε_v) − R_t)²)
    loss = masked_mean(ℓ^π) + vf_coef · masked_mean(ℓ^V)

The loss's means are `losses.common.masked_mean` over the whole batch: global under
`mesh.impl = "shard_map"` (the plain mean otherwise). GAE and the whitening run before the loss
on the whole rollout batch.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from fairjax.losses.common import masked_mean
from fairjax.losses.grpo import clipped_surrogate


@dataclasses.dataclass(frozen=True)
class PPOHParams:
    """gamma / lam: GAE discount and λ; epsilon: policy clip; value_clip: ε_v; vf_coef: weight of
    the value loss; beta: per-token KL-in-reward coefficient; whiten_advantages: see module doc."""

    gamma: float = 1.0
    lam: float = 0.95
    epsilon: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.1
    beta: float = 0.05
    whiten_advantages: bool = True

    def __post_init__(self):
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.lam <= 1.0):
            raise ValueError(f"PPOHParams: gamma={self.gamma} and lam={self.lam} must be in [0, 1]")
        if not 0.0 <= self.epsilon < 1.0 or self.value_clip < 0 or self.vf_coef < 0:
            raise ValueError(f"PPOHParams: epsilon={self.epsilon} must be in [0, 1), value_clip="
                             f"{self.value_clip} and vf_coef={self.vf_coef} >= 0")
        if self.beta < 0:
            raise ValueError(f"PPOHParams.beta: expected >= 0, got {self.beta}")


def last_token_index(mask: jax.Array) -> jax.Array:
    """[N, T] 0/1 mask (a prefix of ones per row) -> [N] index of the last real token (0 if none)."""
    return jnp.maximum(jnp.sum(mask.astype(jnp.int32), -1) - 1, 0)


def token_rewards(scores: jax.Array,  # [N] scalar reward per completion
                  old_logps: jax.Array,  # [N, T]
                  ref_logps: jax.Array,  # [N, T]
                  mask: jax.Array,  # [N, T]
                  beta: float) -> jax.Array:  # -> [N, T]
    """−β (old − ref) on every real token, plus the score on the last real token."""
    m = mask.astype(jnp.float32)
    r = -beta * (old_logps - ref_logps).astype(jnp.float32) * m
    last = jax.nn.one_hot(last_token_index(mask), mask.shape[1], dtype=jnp.float32) * m
    return r + last * jnp.asarray(scores, jnp.float32)[:, None]


def gae(rewards: jax.Array,  # [N, T]
        values: jax.Array,  # [N, T] V(s_t) of the state before token t
        mask: jax.Array,  # [N, T]
        gamma: float, lam: float) -> tuple[jax.Array, jax.Array]:
    """(advantages [N, T], returns [N, T]) by the backward recursion of the module doc; both 0
    on padding."""
    m = mask.astype(jnp.float32)
    v = values.astype(jnp.float32) * m
    r = rewards.astype(jnp.float32) * m
    v_next = jnp.concatenate([v[:, 1:], jnp.zeros_like(v[:, :1])], axis=1)  # 0 past the end
    delta = (r + gamma * v_next - v) * m  # [N, T]

    def back(carry, x):  # carry, x: [N]
        d, mt = x
        a = d + gamma * lam * carry * mt
        return a, a

    _, adv = jax.lax.scan(back, jnp.zeros_like(delta[:, 0]), (delta.T, m.T), reverse=True)
    adv = adv.T * m  # [N, T]
    return adv, (adv + v) * m


def whiten(x: jax.Array, mask: jax.Array, eps: float = 1e-8) -> jax.Array:
    """(x − mean) / sqrt(var + eps) over the masked entries (population variance); 0 on padding."""
    mean = masked_mean(x, mask)
    var = masked_mean(jnp.square(x - mean), mask)
    return (x - mean) * jax.lax.rsqrt(var + eps) * mask.astype(jnp.float32)


def ppo_loss(logps: jax.Array,  # [N, T] under the policy being trained
             old_logps: jax.Array,  # [N, T] at rollout time (no gradient)
             values: jax.Array,  # [N, T] value head now
             old_values: jax.Array,  # [N, T] value head at rollout time (no gradient)
             advantages: jax.Array,  # [N, T] (GAE, whitened; no gradient)
             returns: jax.Array,  # [N, T] (no gradient)
             mask: jax.Array,  # [N, T]
             *, epsilon: float = 0.2, value_clip: float = 0.2, vf_coef: float = 0.1
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped policy + clipped value loss (module doc) -> (scalar, metrics)."""
    sg = jax.lax.stop_gradient
    logps = logps.astype(jnp.float32)
    old = sg(old_logps).astype(jnp.float32)
    adv = sg(advantages).astype(jnp.float32)
    ret = sg(returns).astype(jnp.float32)
    v_old = sg(old_values).astype(jnp.float32)
    pg, ratio, low, high = clipped_surrogate(logps - old, adv, epsilon, epsilon)
    pg_loss = masked_mean(pg, mask)
    v = values.astype(jnp.float32)
    v_clipped = jnp.clip(v, v_old - value_clip, v_old + value_clip)
    vf = 0.5 * jnp.maximum(jnp.square(v - ret), jnp.square(v_clipped - ret))
    vf_loss = masked_mean(vf, mask)
    loss = pg_loss + vf_coef * vf_loss
    metrics = {
        "loss": loss, "policy_loss": sg(pg_loss), "value_loss": sg(vf_loss),
        "clip_ratio/low": masked_mean(low, mask), "clip_ratio/high": masked_mean(high, mask),
        "clip_ratio/region": masked_mean(low | high, mask),
        "value_clip_frac": masked_mean(jnp.square(v_clipped - ret) > jnp.square(v - ret), mask),
        "ratio_mean": sg(masked_mean(ratio, mask)),
        "approx_kl": sg(masked_mean(0.5 * jnp.square(logps - old), mask)),
    }
    return loss, metrics
