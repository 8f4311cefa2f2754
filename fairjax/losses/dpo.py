"""Direct Preference Optimization (Rafailov et al. 2023) and its cDPO / IPO / reference-free options.

With sequence log-probs (sums over response tokens) of the chosen y_w and rejected y_l responses,

    h = (log π(y_w) − log π(y_l)) − (log π_ref(y_w) − log π_ref(y_l))     (ref term 0 if reference_free)
    sigmoid (DPO, eq. 7):  L = −(1−ε)·log σ(β h) − ε·log σ(−β h)           (ε = label_smoothing, cDPO)
    ipo (Azar et al. 2023, eq. 17):  L = (h − 1/(2β))²

averaged over the batch of pairs. Implicit rewards r = β(log π − log π_ref) (sg) are logged as in
upstream A-LoL's `dpo_qlora_llama_hh.py` (β = 0.1 there; ε = 0 is exactly that script's loss).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

LOSS_TYPES = ("sigmoid", "ipo")


@dataclasses.dataclass(frozen=True)
class DPOHParams:
    """beta: β; label_smoothing: ε ∈ [0, 0.5) (cDPO, sigmoid only); loss_type: "sigmoid" | "ipo";
    reference_free: drop the reference log-ratio (π_ref uniform)."""

    beta: float = 0.1
    label_smoothing: float = 0.0
    loss_type: str = "sigmoid"
    reference_free: bool = False

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"DPOHParams.loss_type: expected one of {LOSS_TYPES}, got "
                             f"{self.loss_type!r}")
        if self.beta <= 0:
            raise ValueError(f"DPOHParams.beta: expected > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"DPOHParams.label_smoothing: expected in [0, 0.5), got "
                             f"{self.label_smoothing}")
        if self.label_smoothing > 0 and self.loss_type != "sigmoid":
            raise ValueError("DPOHParams.label_smoothing is only defined for loss_type='sigmoid'")


def dpo_loss(policy_chosen_logps: jax.Array,    # [B] Σ_t log π(y_w,t)
             policy_rejected_logps: jax.Array,  # [B] Σ_t log π(y_l,t)
             ref_chosen_logps: jax.Array,       # [B] Σ_t log π_ref(y_w,t) (ignored if reference_free)
             ref_rejected_logps: jax.Array,     # [B] Σ_t log π_ref(y_l,t)
             hparams: DPOHParams) -> tuple[jax.Array, dict[str, jax.Array]]:
    """DPO / cDPO / IPO loss (module doc) and reward metrics; reference terms carry no gradient."""
    hp = hparams
    pc = policy_chosen_logps.astype(jnp.float32)
    pr = policy_rejected_logps.astype(jnp.float32)
    if hp.reference_free:
        rc = jnp.zeros_like(pc)
        rr = jnp.zeros_like(pr)
    else:
        rc = jax.lax.stop_gradient(ref_chosen_logps).astype(jnp.float32)
        rr = jax.lax.stop_gradient(ref_rejected_logps).astype(jnp.float32)
    h = (pc - pr) - (rc - rr)  # [B]
    if hp.loss_type == "sigmoid":
        eps = hp.label_smoothing
        losses = (-(1.0 - eps) * jax.nn.log_sigmoid(hp.beta * h)
                  - eps * jax.nn.log_sigmoid(-hp.beta * h))
    else:
        losses = jnp.square(h - 1.0 / (2.0 * hp.beta))
    loss = jnp.mean(losses)
    chosen_r = jax.lax.stop_gradient(hp.beta * (pc - rc))
    rejected_r = jax.lax.stop_gradient(hp.beta * (pr - rr))
    metrics = {
        "loss": loss,
        "rewards/chosen": jnp.mean(chosen_r),
        "rewards/rejected": jnp.mean(rejected_r),
        "rewards/accuracy": jnp.mean((chosen_r > rejected_r).astype(jnp.float32)),
        "rewards/margin": jnp.mean(chosen_r - rejected_r),
        "logps/chosen": jnp.mean(jax.lax.stop_gradient(pc)),
        "logps/rejected": jnp.mean(jax.lax.stop_gradient(pr)),
    }
    return loss, metrics
