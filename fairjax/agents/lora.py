"""LoRA versions of the objectives: one frozen base model, trained adapters (models/lora.py).

* `bc_algorithm`: params = adapters; frozen = {"base"}; the BC loss of `agents.lm` on
  base + adapters.
* `alol_algorithm`: the A-LoL loss with the reference = the base with adapters DISABLED (A-LoL's
  reference is the SFT/BC policy: no second model in memory).
* `shared_base_ilql_algorithm`: ONE frozen base (optionally the BC weights) carrying three adapter
  sets — policy (frozen unless the AWAC term trains it), Q/V (trained) and target (Polyak-averaged
  like upstream's target trunk) — plus the V/Q heads, through the SAME loss code as full ILQL
  (`agents.ilql.loss_fn` on the effective trunks). The optimizer state covers adapters + heads only.

The merged kernels are built inside the jitted step (transient, in the base dtype); adapter
dropout is not applied by this merged-kernel formulation (LoraConfig.dropout is kept for the PEFT
metadata).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import optax

from fairjax.agents import ilql as I
from fairjax.agents import lm as LM
from fairjax.agents.base import Algorithm, identity_update
from fairjax.models import lora as L

PyTree = Any


def bc_algorithm(model: nn.Module, lm_cfg: LM.LMConfig, base: PyTree, lora_cfg: L.LoraConfig,
                 kind: str) -> Algorithm:
    scale = lora_cfg.scale
    return Algorithm(
        name="bc_lora",
        init=lambda rng: (L.init(base, lora_cfg, kind, rng), {"base": base}),
        loss=lambda p, f, batch, rng: LM.loss_fn(model, lm_cfg, L.apply(f["base"], p, scale), batch, rng),
        update_frozen=identity_update,
        policy=lambda p, f: (model, L.apply(f["base"], p, scale)),
    )


def alol_algorithm(model: nn.Module, alol_cfg, base: PyTree, lora_cfg: L.LoraConfig,
                   kind: str) -> Algorithm:
    from fairjax.agents import alol as AL

    scale = lora_cfg.scale

    def loss(p, f, batch, rng):
        frozen = {"ref": f["base"]}  # adapters disabled = the reference policy
        return AL.loss_fn(model, alol_cfg, L.apply(f["base"], p, scale), frozen, batch, rng)

    return Algorithm(
        name=f"{alol_cfg.hparams.algorithm}_lora",
        init=lambda rng: (L.init(base, lora_cfg, kind, rng), {"base": base}),
        loss=loss, update_frozen=identity_update,
        policy=lambda p, f: (model, L.apply(f["base"], p, scale)))


def _full(cfg: I.ILQLConfig, params: dict, frozen: dict, scale: float) -> tuple[dict, dict]:
    """Effective ILQL (params, frozen) in the layout `agents.ilql` expects."""
    base = frozen["base"]
    full_p = {"qv": L.apply(base, params["qv"], scale), "heads": params["heads"]}
    full_f = {"target_heads": frozen["target_heads"],
              "target": L.apply(base, frozen["target"], scale)}
    pol = params.get("policy", frozen.get("policy"))
    (full_p if "policy" in params else full_f)["policy"] = L.apply(base, pol, scale)
    return full_p, full_f


def shared_base_ilql_algorithm(model: nn.Module, cfg: I.ILQLConfig, base: PyTree,
                               lora_cfg: L.LoraConfig, kind: str, hidden_size: int,
                               vocab_size: int) -> Algorithm:
    """See the module docstring. Needs separate_policy and separate_target (the three trunks)."""
    if not (cfg.separate_policy and cfg.separate_target):
        raise ValueError("shared-base ILQL keeps three adapter sets: separate_policy and "
                         "separate_target must be True")
    scale = lora_cfg.scale

    def init(rng):
        k_pol, k_qv, k_heads = jax.random.split(rng, 3)
        heads = I.init_heads(k_heads, hidden_size, vocab_size, cfg.hparams.double_q,
                             cfg.head_hidden_mult)
        qv = L.init(base, lora_cfg, kind, k_qv)
        policy = L.init(base, lora_cfg, kind, k_pol)
        params = {"qv": qv, "heads": heads}
        frozen = {"base": base, "target": jax.tree.map(lambda x: x + 0, qv),
                  "target_heads": jax.tree.map(lambda x: x + 0, {k: heads[k] for k in cfg.heads})}
        (params if cfg.policy_trained else frozen)["policy"] = policy
        return params, frozen

    def loss(params, frozen, batch, rng):
        return I.loss_fn(model, cfg, *_full(cfg, params, frozen, scale), batch, rng)

    def update_frozen(params, frozen, step):
        new = {"target": params["qv"], "target_heads": {k: params["heads"][k] for k in cfg.heads}}
        upd = optax.incremental_update(new, {k: frozen[k] for k in new}, cfg.alpha)
        if cfg.hard_update_every:
            upd = optax.periodic_update(new, upd, step, cfg.hard_update_every)
        return {**frozen, **upd}

    def policy(params, frozen):
        return model, _full(cfg, params, frozen, scale)[0 if "policy" in params else 1]["policy"]

    return Algorithm(name="ilql_shared_base_lora", init=init, loss=loss,
                     update_frozen=update_frozen, policy=policy)


def effective_ilql(cfg: I.ILQLConfig, params: dict, frozen: dict, lora_cfg: L.LoraConfig):
    """(params, frozen) of a shared-base run in full-ILQL layout (e.g. for generate.Policy.ilql)."""
    return _full(cfg, params, frozen, lora_cfg.scale)
