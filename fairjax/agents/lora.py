"""LoRA as one transformation of an objective: `loraize(build, module, base, lora_cfg, kind)`.

The objective is built as usual (`build(module, lm) -> Algorithm`), but with the LM trunks it
would hold replaced by LoRA adapter sets (`models.lora.init`: {path: {"a", "b"}}) and the module
by `models.lora.Factored(module)`. Whatever the objective does with its trunks — train them, keep
a frozen copy as the reference (A-LoL, DPO), Polyak-average a target copy (ILQL) — it now does
with small adapter sets, all over ONE frozen base (`frozen["base"]`, optionally quantised through
qwix = QLoRA). The transformed algorithm:

* init: the objective's (params, frozen) with `frozen["base"]` added; the optimizer state covers
  what the objective trains (adapters + heads), never the base.
* loss: the objective's UNCHANGED loss on the effective trees: every adapter set is replaced by
  `attach(base, adapters)` (factored: x·A·B added per adapted layer, no full-size kernel or kernel
  gradient); adapter sets in `params` (trained) get adapter dropout keyed by the step's rng, the
  ones in `frozen` none. A frozen copy of a fresh adapter set (B = 0) is the base itself: A-LoL's
  and DPO's reference is the base with adapters disabled, as the SFT policy should be.
* update_frozen: the objective's, on adapter sets (ILQL's target adapters track its Q/V adapters).
* policy / merged: merged params W + scale·A·B (generation, export).

The trainable-params filter is the (params, frozen) split itself: the base never enters `params`.
Every objective goes through this one transformation, the online ones too: their rollout
producer reads the policy, the reference and the value trunk through `merged` (the state in the
objective's full layout), their loss is the unchanged one on the effective trees.
"""
from __future__ import annotations

import zlib
from typing import Any, Callable

import jax
import jax.numpy as jnp

from fairjax.agents.base import Algorithm
from fairjax.models import lora as L

PyTree = Any
BASE = "base"  # frozen entry holding the (cast / quantised) base params


def is_adapters(tree: Any) -> bool:
    """An adapter set of `models.lora.init`: a non-empty {path: {"a", "b"}} dict."""
    return (isinstance(tree, dict) and bool(tree)
            and all(isinstance(v, dict) and set(v) == {"a", "b"} for v in tree.values()))


def _map_adapters(fn: Callable[[str, dict], Any], tree: PyTree, path: str = "") -> PyTree:
    """`tree` with every adapter set `s` at "/"-joined `path` replaced by fn(path, s)."""
    if is_adapters(tree):
        return fn(path, tree)
    if isinstance(tree, dict):
        return {k: _map_adapters(fn, v, f"{path}/{k}" if path else str(k)) for k, v in tree.items()}
    return tree


def frozen_base(base: PyTree, lora_cfg: L.LoraConfig) -> PyTree:
    """The stored base: quantised through qwix when `lora_cfg.quant` is int8 | nf4 (scales in the
    base's float dtype)."""
    if lora_cfg.quant == "none":
        return base
    dt = next((x.dtype for x in jax.tree.leaves(base) if jnp.issubdtype(x.dtype, jnp.floating)),
              jnp.bfloat16)
    return L.quantize_base(base, lora_cfg.quant, jnp.dtype(dt).name)


def _tag(path: str) -> int:
    """Dropout stream of the adapter set at `path` (the root set: 1)."""
    return 1 if not path else zlib.crc32(path.encode()) & 0x7FFFFFFF


def effective(tree: PyTree, base: PyTree, lora_cfg: L.LoraConfig, rng=None) -> PyTree:
    """Factored effective tree: each adapter set -> `attach(base, set)`; dropout when `rng`."""
    def one(path, ad):
        key = None if rng is None or lora_cfg.dropout == 0 else jax.random.fold_in(rng, _tag(path))
        return L.attach(base, ad, lora_cfg.scale, lora_cfg.dropout, key)
    return _map_adapters(one, tree)


def merged(tree: PyTree, base: PyTree, lora_cfg: L.LoraConfig) -> PyTree:
    """Merged effective tree: each adapter set -> base + scale·A·B (generation / export)."""
    return _map_adapters(lambda _, ad: L.apply(base, ad, lora_cfg.scale), tree)


def loraize(build: Callable[[Any, Any], Algorithm], module, base: PyTree,
            lora_cfg: L.LoraConfig, kind: str) -> Algorithm:
    """The objective `build(module, lm_init) -> Algorithm` in LoRA form over the frozen `base`
    (module docstring). `lm_init` is `rng -> adapters`, the LM trunk the objective starts from."""
    inner = build(L.Factored(module), lambda rng: L.init(base, lora_cfg, kind, rng))

    def init(rng):
        params, frozen = inner.init(rng)
        return params, {**frozen, BASE: frozen_base(base, lora_cfg)}

    def split(frozen):
        return frozen[BASE], {k: v for k, v in frozen.items() if k != BASE}

    def loss(params, frozen, batch, rng):
        b, rest = split(frozen)
        return inner.loss(effective(params, b, lora_cfg, rng), effective(rest, b, lora_cfg),
                          batch, rng)

    def update_frozen(params, frozen, step):
        b, rest = split(frozen)
        return {**inner.update_frozen(params, rest, step), BASE: b}

    def merged_state(params, frozen):
        b, rest = split(frozen)
        return merged(params, b, lora_cfg), merged(rest, b, lora_cfg)

    def policy(params, frozen):
        _, lm = inner.policy(*merged_state(params, frozen))
        return module, lm

    return Algorithm(name=f"{inner.name}_lora", init=init, loss=loss,
                     update_frozen=update_frozen, policy=policy, merged=merged_state)
