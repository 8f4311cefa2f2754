"""LoRA adapters (Hu et al. 2021) for GPT-2 and LLaMA param trees, functional.

y = x·W + b + (α / r) · drop(x)·A·B on the 2-D kernels whose "/"-joined path matches `targets`
(Flax kernels are [in, out]: A [in, r] ~ N(0, 1/in), B [r, out] = 0, so a fresh adapter is the
identity). Adapters are a pytree mirroring the matched kernels: {path: {"a": A, "b": B}} (float32).

Training uses the FACTORED form (`Factored`, `attach`): the model runs on the frozen base and an
interceptor adds x·A·B to each targeted Dense layer's output, so the backward pass produces only
[in, r] / [r, out] adapter gradients (never a full-size kernel gradient), with adapter dropout
(`LoraConfig.dropout`, training only) on the adapter input. The frozen base may be stored in
bfloat16 (`cast_base`) or quantised with qwix (`quantize_base`: int8 per output channel, or nf4 in
blocks of 64 inputs = QLoRA); quantised kernels are dequantised layer by layer inside the step.
`apply` / `merge` build W + (α/r)·A·B (the merged form: export, generation, reference checks);
`peft_state_dict` / `write_peft_dir` / `read_peft_dir` use the PEFT layout (`adapter_config.json`
+ `adapter_model.safetensors`, keys `base_model.model.<hf module>.lora_A.weight` [r, in] and
`.lora_B.weight` [out, r]).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from fairjax.errors import ConfigError
from fairjax.models.common import path_str
from fairjax.models.layout import detect_layout

PyTree = Any
DEFAULT_TARGETS = {"gpt2": r"attn/c_attn/kernel$", "llama": r"self_attn/(q|v)_proj/kernel$"}
# fairjax path prefix -> HF module prefix (PEFT names wrap HF module names)
_HF_PREFIX = {"gpt2": [(r"^h_(\d+)/", r"transformer.h.\1."), (r"^wte/", "transformer.wte."),
                       (r"^wpe/", "transformer.wpe."), (r"^ln_f/", "transformer.ln_f.")],
              "llama": [(r"^layers_(\d+)/", r"model.layers.\1."),
                        (r"^embed_tokens/", "model.embed_tokens."), (r"^norm/", "model.norm."),
                        (r"^lm_head/", "lm_head.")]}


QUANT_TYPES = ("none", "int8", "nf4")
BASE_DTYPES = ("float32", "bfloat16", "float16")
NF4_BLOCK = 64  # QLoRA's block size along the input axis
LORA_KEY = "__lora__"  # entry of an effective param dict carrying adapters (see `attach`)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank r, alpha α (scale α/r), dropout on the adapter input (training only), `targets`
    regex on param paths ("" = the family default: GPT-2 c_attn, LLaMA q/v projections), `quant`:
    storage of the frozen base's block kernels ('none' | 'int8' | 'nf4', through qwix)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str = ""
    quant: str = "none"

    def __post_init__(self):
        validate(self, "LoraConfig")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def pattern(self, kind: str) -> str:
        return self.targets or DEFAULT_TARGETS[kind]

    @classmethod
    def from_config(cls, lora_cfg) -> "LoraConfig":
        """From a run config's `lora` block (rank, alpha, dropout, targets, quant)."""
        return cls(rank=int(lora_cfg.rank), alpha=float(lora_cfg.alpha),
                   dropout=float(lora_cfg.dropout), targets=str(lora_cfg.targets),
                   quant=str(lora_cfg.get("quant", "none") if hasattr(lora_cfg, "get")
                             else getattr(lora_cfg, "quant", "none")))


def validate(lora_cfg, prefix: str = "config.lora") -> None:
    """Raise `ConfigError` naming `<prefix>.<key>` and the allowed values for a bad rank, alpha,
    dropout, quant or base_dtype (any object with those attributes; missing ones are skipped).
    Called by `LoraConfig` and by the run-config validator."""
    get = (lambda k: lora_cfg.get(k)) if hasattr(lora_cfg, "get") else (  # noqa: E731
        lambda k: getattr(lora_cfg, k, None))
    quant, base_dtype = get("quant"), get("base_dtype")
    if quant is not None and quant not in QUANT_TYPES:
        raise ConfigError(f"{prefix}.quant={quant!r}; expected one of {list(QUANT_TYPES)} "
                          "(int8: per-channel absmax, nf4: QLoRA NormalFloat4 in blocks of 64)")
    if base_dtype is not None and base_dtype not in BASE_DTYPES:
        raise ConfigError(f"{prefix}.base_dtype={base_dtype!r}; expected one of {list(BASE_DTYPES)}")
    rank, dropout = get("rank"), get("dropout")
    if rank is not None and int(rank) < 1:
        raise ConfigError(f"{prefix}.rank={rank!r}; expected an integer >= 1")
    if dropout is not None and not 0.0 <= float(dropout) < 1.0:
        raise ConfigError(f"{prefix}.dropout={dropout!r}; expected a rate in [0, 1)")


def _flat(params: PyTree) -> dict[str, jax.Array]:
    return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def target_paths(params: PyTree, cfg: LoraConfig, kind: str) -> list[str]:
    found = detect_layout(params)
    if found is not None and found[0] == "scanned":
        raise ValueError(f"LoRA on a scan_layers model (blocks stacked under {found[1]!r}) is not "
                         "wired yet: build the model with scan_layers=False (convert the params "
                         "with fairjax.models.layout.unscan_params)")
    pat = re.compile(cfg.pattern(kind))
    out = [k for k, x in _flat(params).items()
           if pat.search(k) and k.endswith("/kernel") and np.ndim(x) == 2]
    if not out:
        raise ValueError(f"LoRA targets {cfg.pattern(kind)!r} match no 2-D kernel of this {kind} model")
    head = [k for k in out if k.startswith("lm_head/")]
    if head:
        raise ValueError(f"LoRA targets {cfg.pattern(kind)!r} match the LM head {head}: the "
                         "factored form adapts block projections only; narrow lora.targets")
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
    """MERGED effective params: base kernels + scale·A@B (in the base kernel's dtype; a quantised
    base is dequantised); `enabled=False` returns the base. Training uses the factored form
    (`Factored` + `attach`), which never builds these full-size kernels."""
    base = dequantize_base(base)
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
    """Merged float32 params (for HF export / inference without adapters); a quantised base is
    dequantised first."""
    full = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), dequantize_base(base))
    return apply(full, adapters, scale)


def cast_base(base: PyTree, dtype: str) -> PyTree:
    """The frozen base stored in `dtype` (e.g. bfloat16: half the bytes of float32)."""
    def cast(x):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return x
        if isinstance(x, jax.ShapeDtypeStruct):  # abstract shapes (memory estimates)
            return jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype), sharding=x.sharding)
        return x.astype(dtype)

    return jax.tree.map(cast, base)


# ----------------------------------------------------------------------------- quantised base
def _is_q(x) -> bool:
    import qwix

    return isinstance(x, qwix.QArray)


def quantize_base(base: PyTree, quant: str, dtype: str = "bfloat16") -> PyTree:
    """The frozen base with every transformer-block kernel (2-D `.../kernel` outside the LM head
    and embeddings) stored as a qwix `QArray`: 'int8' = absmax per output channel, 'nf4' =
    NormalFloat4 with one absmax per block of 64 inputs per output channel (QLoRA); scales and
    every other leaf in `dtype`. 'none' only casts to `dtype`."""
    import qwix

    validate({"quant": quant, "base_dtype": dtype}, "quantize_base")
    base = cast_base(base, dtype)
    if quant == "none":
        return base

    def leaf(path, x):
        name = path_str(path)
        if np.ndim(x) != 2 or not name.endswith("/kernel") or name.startswith("lm_head/"):
            return x
        if quant == "int8":
            return qwix.quantize(x, jnp.int8, channelwise_axes=(1,))
        tile = NF4_BLOCK if x.shape[0] % NF4_BLOCK == 0 else x.shape[0]
        return qwix.quantize(x, "nf4", channelwise_axes=(1,), tiled_axes={0: tile})

    return jax.tree_util.tree_map_with_path(leaf, base)


def dequantize_base(base: PyTree) -> PyTree:
    """Every qwix `QArray` leaf dequantised (to its scale dtype); other leaves unchanged."""
    import qwix

    return jax.tree.map(lambda x: qwix.dequantize(x) if _is_q(x) else x, base, is_leaf=_is_q)


# ----------------------------------------------------------------------------- factored form
def attach(base: PyTree, adapters: Optional[dict], scale: float, rate: float = 0.0,
           rng: Optional[jax.Array] = None) -> dict:
    """Effective params for a `Factored` model: the base dict plus a `LORA_KEY` entry (adapters,
    scale, dropout rate and key). `adapters=None` (or empty) gives the base alone. Dropout is
    active only when `rng` is given and rate > 0 (training)."""
    if not adapters:
        return base
    return {**base, LORA_KEY: {"adapters": adapters, "scale": scale,
                                "rate": rate if rng is not None else 0.0, "rng": rng}}


class Factored:
    """Wraps a Flax LM so that `apply({"params": attach(base, adapters, ...)}, ...)` runs the base
    (quantised kernels dequantised per layer) and adds scale·drop(x)·A·B to each adapted Dense
    output. Every other attribute is the wrapped module's."""

    def __init__(self, module):
        self.module = module

    def __getattr__(self, name):
        return getattr(self.module, name)

    def apply(self, variables: dict, *args, **kwargs):
        import flax.linen as nn

        params = dict(variables["params"])
        lora = params.pop(LORA_KEY, None)
        has_q = any(_is_q(x) for x in jax.tree.leaves(params, is_leaf=_is_q))
        if lora is None and not has_q:
            return self.module.apply({**variables, "params": params}, *args, **kwargs)
        lora = lora or {"adapters": {}, "scale": 0.0, "rate": 0.0, "rng": None}

        def interceptor(next_fun, a, kw, context):
            mod = context.module
            if not isinstance(mod, nn.Dense) or context.method_name != "__call__":
                return next_fun(*a, **kw)
            name = "/".join(mod.path) + "/kernel"
            ad = lora["adapters"].get(name)
            p = mod.variables["params"]
            if ad is None and not _is_q(p["kernel"]):
                return next_fun(*a, **kw)
            return _dense_lora(mod, a[0], p, ad, lora, name)

        with nn.intercept_methods(interceptor):
            return self.module.apply({**variables, "params": params}, *args, **kwargs)


def _dense_lora(mod, x: jax.Array, p: dict, ad: Optional[dict], lora: dict, name: str):
    """A Dense layer's output [..., out] with a possibly quantised kernel and an adapter:
    x·W + b + scale·drop(x)·A·B, computed in the layer's dtype (as `nn.Dense`)."""
    import zlib

    import qwix

    dt = jnp.dtype(mod.dtype or jnp.float32)
    k = qwix.dequantize(p["kernel"]) if _is_q(p["kernel"]) else p["kernel"]
    xd = x.astype(dt)
    y = jax.lax.dot_general(xd, k.astype(dt), (((x.ndim - 1,), (0,)), ((), ())),
                            precision=mod.precision)
    if mod.use_bias:
        y = y + p["bias"].astype(dt)
    if ad is not None:
        h = xd
        if lora["rate"] > 0:
            key = jax.random.fold_in(lora["rng"], zlib.crc32(name.encode()) & 0x7FFFFFFF)
            keep = jax.random.bernoulli(key, 1.0 - lora["rate"], h.shape)
            h = jnp.where(keep, h / (1.0 - lora["rate"]), 0).astype(dt)
        delta = (h @ ad["a"].astype(dt)) @ ad["b"].astype(dt)  # [..., r] then [..., out]
        y = y + (delta * lora["scale"]).astype(dt)
    return y


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
