"""LoRA versions of the objectives: one frozen base model, trained adapters (models/lora.py).

* `bc_algorithm`: params = adapters; frozen = {"base"}; the BC loss of `agents.lm` on
  base + adapters.
* `alol_algorithm`: the A-LoL loss with the reference = the base with adapters DISABLED (A-LoL's
  reference is the SFT/BC policy: no second model in memory).
* `shared_base_ilql_algorithm`: ONE frozen base (optionally the BC weights) carrying three adapter
  sets — policy (frozen unless the AWAC term trains it), Q/V (trained) and target (Polyak-averaged
  like upstream's target trunk) — plus the V/Q heads, through the SAME loss code as full ILQL
  (`agents.ilql.loss_fn` on the effective trunks). The optimizer state covers adapters + heads only.

Training runs the FACTORED form (`models.lora.Factored`): x·A·B is added to each adapted layer's
output, so no full-size kernel or kernel gradient is built, and adapter dropout
(`LoraConfig.dropout`) is applied in the loss (key derived from the step's rng). With
`LoraConfig.quant` = int8 | nf4 the frozen base is quantised through qwix in `init` (QLoRA) and
dequantised layer by layer in the step. `policy` returns merged params (generation/export).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fairjax.agents import ilql as I
from fairjax.agents import lm as LM
from fairjax.agents.base import Algorithm, identity_update
from fairjax.models import lora as L

PyTree = Any


def _frozen_base(base: PyTree, lora_cfg: L.LoraConfig) -> PyTree:
    """The stored base: quantised through qwix when `lora_cfg.quant` is int8 | nf4 (scales in the
    base's float dtype)."""
    if lora_cfg.quant == "none":
        return base
    dt = next((x.dtype for x in jax.tree.leaves(base) if jnp.issubdtype(x.dtype, jnp.floating)),
              jnp.bfloat16)
    return L.quantize_base(base, lora_cfg.quant, jnp.dtype(dt).name)


def _eff(base, adapters, lora_cfg: L.LoraConfig, rng, tag: int):
    """Factored effective params; adapter dropout keyed by fold_in(rng, tag) when training."""
    key = None if rng is None or lora_cfg.dropout == 0 else jax.random.fold_in(rng, tag)
    return L.attach(base, adapters, lora_cfg.scale, lora_cfg.dropout, key)


def bc_algorithm(model: nn.Module, lm_cfg: LM.LMConfig, base: PyTree, lora_cfg: L.LoraConfig,
                 kind: str) -> Algorithm:
    scale = lora_cfg.scale
    fm = L.Factored(model)
    return Algorithm(
        name="bc_lora",
        init=lambda rng: (L.init(base, lora_cfg, kind, rng), {"base": _frozen_base(base, lora_cfg)}),
        loss=lambda p, f, batch, rng: LM.loss_fn(fm, lm_cfg, _eff(f["base"], p, lora_cfg, rng, 1),
                                                 batch, rng),
        update_frozen=identity_update,
        policy=lambda p, f: (model, L.apply(f["base"], p, scale)),
    )


def alol_algorithm(model: nn.Module, alol_cfg, base: PyTree, lora_cfg: L.LoraConfig,
                   kind: str) -> Algorithm:
    from fairjax.agents import alol as AL

    scale = lora_cfg.scale
    fm = L.Factored(model)

    def loss(p, f, batch, rng):
        frozen = {"ref": f["base"]}  # adapters disabled = the reference policy
        return AL.loss_fn(fm, alol_cfg, _eff(f["base"], p, lora_cfg, rng, 1), frozen, batch, rng)

    return Algorithm(
        name=f"{alol_cfg.hparams.algorithm}_lora",
        init=lambda rng: (L.init(base, lora_cfg, kind, rng), {"base": _frozen_base(base, lora_cfg)}),
        loss=loss, update_frozen=identity_update,
        policy=lambda p, f: (model, L.apply(f["base"], p, scale)))


def _full(cfg: I.ILQLConfig, params: dict, frozen: dict, scale: float) -> tuple[dict, dict]:
    """Effective ILQL (params, frozen) with MERGED trunks (generation / export)."""
    base = frozen["base"]
    full_p = {"qv": L.apply(base, params["qv"], scale), "heads": params["heads"]}
    full_f = {"target_heads": frozen["target_heads"],
              "target": L.apply(base, frozen["target"], scale)}
    pol = params.get("policy", frozen.get("policy"))
    (full_p if "policy" in params else full_f)["policy"] = L.apply(base, pol, scale)
    return full_p, full_f


def _factored(params: dict, frozen: dict, lora_cfg: L.LoraConfig, rng) -> tuple[dict, dict]:
    """Effective ILQL (params, frozen) for `Factored`: each trunk = base + its adapter set
    (dropout on the trained sets only)."""
    base = frozen["base"]
    full_p = {"qv": _eff(base, params["qv"], lora_cfg, rng, 1), "heads": params["heads"]}
    full_f = {"target_heads": frozen["target_heads"],
              "target": _eff(base, frozen["target"], lora_cfg, None, 0)}
    if "policy" in params:
        full_p["policy"] = _eff(base, params["policy"], lora_cfg, rng, 2)
    else:
        full_f["policy"] = _eff(base, frozen["policy"], lora_cfg, None, 0)
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
        frozen = {"base": _frozen_base(base, lora_cfg), "target": jax.tree.map(lambda x: x + 0, qv),
                  "target_heads": jax.tree.map(lambda x: x + 0, {k: heads[k] for k in cfg.heads})}
        (params if cfg.policy_trained else frozen)["policy"] = policy
        return params, frozen

    fm = L.Factored(model)

    def loss(params, frozen, batch, rng):
        return I.loss_fn(fm, cfg, *_factored(params, frozen, lora_cfg, rng), batch, rng)

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
