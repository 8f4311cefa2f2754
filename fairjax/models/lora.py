"""LoRA adapters (Hu et al. 2021) for GPT-2 and LLaMA param trees, functional.

W' = W + (α / r) · A @ B on the 2-D kernels whose "/"-joined path matches `targets` (Flax kernels
are [in, out]: A [in, r] ~ N(0, 1/r)·(Kaiming-like), B [r, out] = 0, so a fresh adapter is the
identity). Adapters are a pytree mirroring the matched kernels: {path: {"a": A, "b": B}} (float32);
the frozen base can be stored in the compute dtype (bfloat16). `apply` builds the effective params
inside the jitted step (a transient merged kernel per layer; the optimizer state holds only A, B);
`merge` materialises them for export; `peft_state_dict` / `write_peft_dir` / `read_peft_dir`
use the PEFT layout (`adapter_config.json` + `adapter_model.safetensors`, keys
`base_model.model.<hf module>.lora_A.weight` [r, in] and `.lora_B.weight` [out, r]).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fairjax.models.common import path_str

PyTree = Any
DEFAULT_TARGETS = {"gpt2": r"attn/c_attn/kernel$", "llama": r"self_attn/(q|v)_proj/kernel$"}
# fairjax path prefix -> HF module prefix (PEFT names wrap HF module names)
_HF_PREFIX = {"gpt2": [(r"^h_(\d+)/", r"transformer.h.\1."), (r"^wte/", "transformer.wte."),
                       (r"^wpe/", "transformer.wpe."), (r"^ln_f/", "transformer.ln_f.")],
              "llama": [(r"^layers_(\d+)/", r"model.layers.\1."),
                        (r"^embed_tokens/", "model.embed_tokens."), (r"^norm/", "model.norm."),
                        (r"^lm_head/", "lm_head.")]}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank r, alpha α (scale α/r), dropout on the adapter input (training only), `targets`
    regex on param paths ("" = the family default: GPT-2 c_attn, LLaMA q/v projections)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str = ""

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def pattern(self, kind: str) -> str:
        return self.targets or DEFAULT_TARGETS[kind]


def _flat(params: PyTree) -> dict[str, jax.Array]:
    return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def target_paths(params: PyTree, cfg: LoraConfig, kind: str) -> list[str]:
    pat = re.compile(cfg.pattern(kind))
    out = [k for k, x in _flat(params).items() if pat.search(k) and np.ndim(x) == 2]
    if not out:
        raise ValueError(f"LoRA targets {cfg.pattern(kind)!r} match no 2-D kernel of this {kind} model")
    return sorted(out)


def init(params: PyTree, cfg: LoraConfig, kind: str, rng: jax.Array) -> dict:
    """Adapters {path: {"a": [in, r], "b": [r, out]}} float32 for every targeted kernel."""
    flat = _flat(params)
    paths = target_paths(params, cfg, kind)
    keys = jax.random.split(rng, len(paths))
    out = {}
    for k, key in zip(paths, keys):
        d_in, d_out = flat[k].shape
        out[k] = {"a": jax.random.normal(key, (d_in, cfg.rank), jnp.float32) / np.sqrt(d_in),
                  "b": jnp.zeros((cfg.rank, d_out), jnp.float32)}
    return out


def apply(base: PyTree, adapters: dict, scale: float, enabled: bool = True) -> PyTree:
    """Effective params: base kernels + scale·A@B (in the base kernel's dtype); `enabled=False`
    returns the base (the reference policy of A-LoL/DPO with LoRA: no second model)."""
    if not enabled or not adapters:
        return base

    def leaf(path, x):
        ad = adapters.get(path_str(path))
        if ad is None:
            return x
        delta = (ad["a"] @ ad["b"]) * scale
        return (x.astype(jnp.float32) + delta).astype(x.dtype)

    return jax.tree_util.tree_map_with_path(leaf, base)


def merge(base: PyTree, adapters: dict, scale: float) -> PyTree:
    """Merged float32 params (for HF export / inference without adapters)."""
    return apply(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), base), adapters, scale)


def cast_base(base: PyTree, dtype: str) -> PyTree:
    """The frozen base stored in `dtype` (e.g. bfloat16: half the bytes of float32)."""
    def cast(x):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return x
        if isinstance(x, jax.ShapeDtypeStruct):  # abstract shapes (memory estimates)
            return jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype), sharding=x.sharding)
        return x.astype(dtype)

    return jax.tree.map(cast, base)


# ----------------------------------------------------------------------------- PEFT files
def hf_module_name(path: str, kind: str) -> str:
    """'h_0/attn/c_attn/kernel' -> 'transformer.h.0.attn.c_attn' (GPT-2); LLaMA likewise."""
    name = re.sub(r"/kernel$", "", path)
    for pat, rep in _HF_PREFIX[kind]:
        if re.match(pat, name):
            name = re.sub(pat, rep, name)
            break
    return name.replace("/", ".")


def peft_state_dict(adapters: dict, kind: str) -> dict[str, np.ndarray]:
    """PEFT tensors: lora_A.weight [r, in] = A^T, lora_B.weight [out, r] = B^T (PEFT's Linear
    layout; for GPT-2's Conv1D PEFT sets fan_in_fan_out=True on the BASE weight only)."""
    out = {}
    for path, ad in adapters.items():
        name = f"base_model.model.{hf_module_name(path, kind)}"
        out[f"{name}.lora_A.weight"] = np.ascontiguousarray(np.asarray(ad["a"], np.float32).T)
        out[f"{name}.lora_B.weight"] = np.ascontiguousarray(np.asarray(ad["b"], np.float32).T)
    return out


def write_peft_dir(out_dir: str | os.PathLike, adapters: dict, cfg: LoraConfig, kind: str,
                   base_model_name: str = "") -> Path:
    """adapter_config.json + adapter_model.safetensors (PEFT LoRA layout)."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    modules = sorted({hf_module_name(p, kind).rsplit(".", 1)[-1] for p in adapters})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg.rank,
              "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout, "bias": "none",
              "target_modules": modules, "fan_in_fan_out": kind == "gpt2",
              "base_model_name_or_path": base_model_name, "inference_mode": True}
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(peft_state_dict(adapters, kind), str(out / "adapter_model.safetensors"))
    return out


def read_peft_dir(path: str | os.PathLike, params: PyTree, kind: str) -> tuple[dict, LoraConfig]:
    """Adapters (fairjax paths) + config from a PEFT dir, checked against `params`' kernels."""
    from safetensors.numpy import load_file

    path = Path(path)
    conf = json.loads((path / "adapter_config.json").read_text())
    cfg = LoraConfig(rank=int(conf["r"]), alpha=float(conf["lora_alpha"]),
                     dropout=float(conf.get("lora_dropout", 0.0)))
    tensors = load_file(str(path / "adapter_model.safetensors"))
    flat = _flat(params)
    by_name = {hf_module_name(p, kind): p for p in flat if p.endswith("/kernel")}
    out = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[len("base_model.model."):-len(".lora_A.weight")]
        if module not in by_name:
            raise ValueError(f"{path}: adapter for {module!r} matches no kernel of the model")
        p = by_name[module]
        b = tensors[key.replace("lora_A", "lora_B")]
        d_in, d_out = flat[p].shape
        if a.shape != (cfg.rank, d_in) or b.shape != (d_out, cfg.rank):
            raise ValueError(f"{path}: {module} lora_A {a.shape} / lora_B {b.shape} do not fit the "
                             f"kernel {flat[p].shape} at rank {cfg.rank}")
        out[p] = {"a": jnp.asarray(a.T), "b": jnp.asarray(b.T)}
    return out, cfg
