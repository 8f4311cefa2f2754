"""LLaMA in Flax Linen, numerically equal to Hugging Face `LlamaForCausalLM`.

RMSNorm, rotary embeddings in HF's rotate-half convention, grouped-query attention, SwiGLU MLP,
untied LM head by default; with `tie_word_embeddings` the logits are h·Eᵀ through
`embed_tokens` and there is no `lm_head` param. Param tree mirrors HF names:
`embed_tokens/embedding`, `layers_{i}/{input_layernorm/weight, self_attn/{q,k,v,o}_proj/kernel,
post_attention_layernorm/weight, mlp/{gate,up,down}_proj/kernel}`, `norm/weight`, `lm_head/kernel`.

RoPE pitfall: Meta's original checkpoints rotate interleaved pairs, HF's permute q/k rows so that
rotate-half applies; EasyLM-style ports undo that permutation. We apply rotate-half exactly as HF
does, so HF q/k weights are used as they are (only transposed: torch `nn.Linear` is `[out, in]`,
Flax `kernel` is `[in, out]`; the transposes happen in `params_from_hf` / `params_to_hf`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from fairjax.errors import ConfigError
from fairjax.models import common, layout
from fairjax.models.common import KVCache, LMOutput

ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """LLaMA hyper-parameters (HF `LlamaConfig` semantics) + fairjax run options.

    rope_scaling: None or a tuple of (key, value) pairs of HF `rope_parameters` other than
    rope_theta (e.g. `(("factor", 8.0), ("rope_type", "llama3"), ...)`).
    dtype: compute dtype name (params always float32); remat: a key of common.REMAT_POLICIES (none | block | dots | dots_saveable | offload).
    """

    kind: ClassVar[str] = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: Optional[int] = None  # None -> num_heads (multi-head attention)
    head_dim_: Optional[int] = None  # HF head_dim; None -> hidden_size // num_heads
    max_positions: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: Optional[tuple] = None
    attention_bias: bool = False
    mlp_bias: bool = False
    attention_dropout: float = 0.0
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    bos_token_id: Optional[int] = 1
    eos_token_id: Any = 2
    pad_token_id: Optional[int] = None
    dtype: str = "float32"
    remat: str = "none"
    attention_impl: str = "xla"  # "xla" (exact einsum) | "cudnn" (fused, GPU) | "auto"
    scan_layers: bool = False  # blocks under nn.scan: params `layers/...` stacked [L, ...]
    hf_extra: tuple = ()

    def __post_init__(self):
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        common.check_choice("remat", self.remat, list(common.REMAT_POLICIES))
        common.check_choice("attention_impl", self.attention_impl, list(common.ATTENTION_IMPLS))
        common.check_choice("rope_type", self.rope_type, ROPE_TYPES)
        common.compute_dtype(self.dtype)
        common.check_scan_layers(self.scan_layers)
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_attention_heads={self.num_heads} is not a multiple of "
                              f"num_key_value_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for rotary embeddings")

    @property
    def head_dim(self) -> int:
        return self.head_dim_ or self.hidden_size // self.num_heads

    @property
    def rope_type(self) -> str:
        return dict(self.rope_scaling or ()).get("rope_type", "default")

    def inv_freq(self) -> np.ndarray:
        """RoPE inverse frequencies [head_dim/2] float32 (HF default / linear / llama3)."""
        dim = self.head_dim
        inv = 1.0 / (np.float32(self.rope_theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
        params = dict(self.rope_scaling or ())
        if self.rope_type == "linear":
            inv = inv / np.float32(params["factor"])
        elif self.rope_type == "llama3":
            factor, lo, hi = (float(params[k]) for k in ("factor", "low_freq_factor", "high_freq_factor"))
            old_len = float(params["original_max_position_embeddings"])
            wavelen = 2 * math.pi / inv
            scaled = np.where(wavelen > old_len / lo, inv / factor, inv)
            smooth = (old_len / wavelen - lo) / (hi - lo)
            smoothed = (1 - smooth) * scaled / factor + smooth * scaled
            medium = (wavelen >= old_len / hi) & (wavelen <= old_len / lo)
            inv = np.where(medium, smoothed, scaled)
        return inv.astype(np.float32)

    _HF_NAMES: ClassVar[dict[str, str]] = {
        "vocab_size": "vocab_size", "hidden_size": "hidden_size",
        "intermediate_size": "intermediate_size", "num_hidden_layers": "num_layers",
        "num_attention_heads": "num_heads", "num_key_value_heads": "num_kv_heads",
        "head_dim": "head_dim_", "max_position_embeddings": "max_positions",
        "rms_norm_eps": "rms_norm_eps", "attention_bias": "attention_bias", "mlp_bias": "mlp_bias",
        "attention_dropout": "attention_dropout", "tie_word_embeddings": "tie_word_embeddings",
        "initializer_range": "initializer_range", "bos_token_id": "bos_token_id",
        "eos_token_id": "eos_token_id", "pad_token_id": "pad_token_id",
    }

    @classmethod
    def from_hf(cls, d: Mapping[str, Any], **overrides) -> "LlamaConfig":
        """From a HF LLaMA config.json dict. rope_theta is read from `rope_parameters`
        (transformers 5.x) or the top level (4.x); scaling from `rope_parameters`/`rope_scaling`."""
        if d.get("model_type", "llama") != "llama":
            raise ConfigError(f"model_type={d.get('model_type')!r}; LlamaConfig expects 'llama'")
        if d.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"hidden_act={d['hidden_act']!r}; only 'silu' (SwiGLU) is supported")
        if d.get("pretraining_tp", 1) not in (1, None):
            pass  # tensor-parallel split of the original weights only; the maths is the same
        kwargs = {ours: d[hf] for hf, ours in cls._HF_NAMES.items() if hf in d}
        rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", d.get("rope_theta", 10000.0))
        if "type" in rope:  # transformers 4.x spelling
            rope.setdefault("rope_type", rope.pop("type"))
        kwargs["rope_theta"] = float(theta)
        kwargs["rope_scaling"] = tuple(sorted(rope.items())) if rope and rope != {"rope_type": "default"} else None
        consumed = set(cls._HF_NAMES) | {"rope_parameters", "rope_scaling", "rope_theta", "hidden_act",
                                         "pretraining_tp"}
        kwargs["hf_extra"] = common.split_hf_extras(d, consumed)
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf(self) -> dict[str, Any]:
        """HF config.json dict (transformers 5.x layout: RoPE under `rope_parameters`)."""
        out = common.join_hf_extras(self.hf_extra)
        out.update({hf: getattr(self, ours) for hf, ours in self._HF_NAMES.items()})
        out["head_dim"] = self.head_dim
        if isinstance(self.eos_token_id, tuple):
            out["eos_token_id"] = list(self.eos_token_id)
        rope = {"rope_theta": self.rope_theta, "rope_type": "default"}
        rope.update(dict(self.rope_scaling or ()))
        out.update({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "dtype": "float32",
                    "hidden_act": "silu", "pretraining_tp": 1, "rope_parameters": rope})
        return dict(sorted(out.items()))

    def replace(self, **kw) -> "LlamaConfig":
        return dataclasses.replace(self, **kw)

    def partition_rules(self) -> list[tuple[str, P]]:
        """Regex on '/'-joined param path -> PartitionSpec over ('data', 'fsdp', 'tensor')."""
        return common.layer_axis_rules(self, "layers", [
            (r"embed_tokens/embedding$", P("tensor", "fsdp")),
            (r"self_attn/(q_proj|k_proj|v_proj)/kernel$", P("fsdp", "tensor")),
            (r"self_attn/o_proj/kernel$", P("tensor", "fsdp")),
            (r"mlp/(gate_proj|up_proj)/kernel$", P("fsdp", "tensor")),
            (r"mlp/down_proj/kernel$", P("tensor", "fsdp")),
            (r"lm_head/kernel$", P("fsdp", "tensor")),
            (r"(input_layernorm|post_attention_layernorm|norm)/weight$", P()),
            (r"/bias$", P()),
            (r".*", P()),
        ])


# Size presets reused by the benchmarks. 7b = LLaMA-2-7B shapes; 1b = TinyLlama-1.1B shapes.
PRESETS: dict[str, LlamaConfig] = {
    "tiny": LlamaConfig(vocab_size=1006, hidden_size=64, intermediate_size=172, num_layers=2,
                        num_heads=4, num_kv_heads=2, max_positions=128, rms_norm_eps=1e-6),
    "small": LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_layers=12,
                         num_heads=12, num_kv_heads=4, max_positions=2048),
    "1b": LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_layers=22,
                      num_heads=32, num_kv_heads=4, max_positions=2048),
    "7b": LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32,
                      num_heads=32, num_kv_heads=32, max_positions=4096, rms_norm_eps=1e-5),
}


class RMSNorm(nn.Module):
    """weight * x / sqrt(mean(x^2) + eps), statistics in float32 (HF LlamaRMSNorm)."""

    eps: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):  # [..., d]
        weight = self.param("weight", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return weight.astype(self.dtype) * xf.astype(self.dtype)


def _dense(c: LlamaConfig, features: int, name: str, bias: bool) -> nn.Dense:
    return nn.Dense(features, use_bias=bias, dtype=common.compute_dtype(c.dtype),
                    param_dtype=jnp.float32,
                    kernel_init=nn.initializers.normal(c.initializer_range), name=name)


class LlamaAttention(nn.Module):
    config: LlamaConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, mask, cos, sin, layer_cache, cache_index):
        """x: [B, T, d]; mask: [B, 1, T, S] bool; cos/sin: [B, T, Dh]; layer_cache: (k, v) or None."""
        c = self.config
        b, t, _ = x.shape
        q = _dense(c, c.num_heads * c.head_dim, "q_proj", c.attention_bias)(x)
        k = _dense(c, c.num_kv_heads * c.head_dim, "k_proj", c.attention_bias)(x)
        v = _dense(c, c.num_kv_heads * c.head_dim, "v_proj", c.attention_bias)(x)
        q = common.apply_rope(q.reshape(b, t, c.num_heads, c.head_dim), cos, sin)
        k = common.apply_rope(k.reshape(b, t, c.num_kv_heads, c.head_dim), cos, sin)
        v = v.reshape(b, t, c.num_kv_heads, c.head_dim)
        new_cache = None
        if layer_cache is not None:
            k, v = new_cache = common.update_cache_layer(*layer_cache, k, v, cache_index)
        y = common.attention(q, k, v, mask, 1.0 / math.sqrt(c.head_dim), impl=c.attention_impl,
                             kv_layout="bshd" if layer_cache is None else "bhsd",
                             dropout=common.attention_dropout(c.attention_dropout,
                                                              self.deterministic))
        y = _dense(c, c.hidden_size, "o_proj", c.attention_bias)(y.reshape(b, t, -1))
        return y, new_cache


class LlamaMLP(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x):  # [B, T, d]: down(silu(gate(x)) * up(x))
        c = self.config
        gate = _dense(c, c.intermediate_size, "gate_proj", c.mlp_bias)(x)
        up = _dense(c, c.intermediate_size, "up_proj", c.mlp_bias)(x)
        return _dense(c, c.hidden_size, "down_proj", c.mlp_bias)(jax.nn.silu(gate) * up)


class LlamaBlock(nn.Module):
    config: LlamaConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, mask, cos, sin, layer_cache, cache_index):
        c = self.config
        dt = common.compute_dtype(c.dtype)
        a, new_cache = LlamaAttention(c, self.deterministic, name="self_attn")(
            RMSNorm(c.rms_norm_eps, dt, name="input_layernorm")(x), mask, cos, sin,
            layer_cache, cache_index)
        x = x + a
        x = x + LlamaMLP(c, name="mlp")(RMSNorm(c.rms_norm_eps, dt, name="post_attention_layernorm")(x))
        return x, new_cache


class LlamaForCausalLM(nn.Module):
    """LLaMA LM. Call: (input_ids [B,T], attention_mask [B,T] or [B,S_max] with cache,
    position_ids [B,T], cache, compute_logits, deterministic, segment_ids [B,T] (packed rows:
    attention stays within a segment, positions restart per segment)) -> LMOutput."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, position_ids=None, cache: KVCache | None = None,
                 compute_logits: bool = True, deterministic: bool = True,
                 segment_ids=None) -> LMOutput:
        c = self.config
        dt = common.compute_dtype(c.dtype)
        mask, pos, index = common.attention_mask_and_positions(input_ids, attention_mask,
                                                               position_ids, cache, segment_ids)
        init = nn.initializers.normal(c.initializer_range)
        embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=dt, param_dtype=jnp.float32,
                         embedding_init=init, name="embed_tokens")
        x = embed(input_ids)  # [B, T, d]
        self.sow("intermediates", "embeddings", x)
        cos, sin = common.rope_tables(pos, c.inv_freq())  # [B, T, Dh]
        block = common.remat_block(LlamaBlock, c.remat)
        x, kv = common.run_blocks(self, lambda i, name: block(c, deterministic, name=name),
                                  c.num_layers, "layers", c.scan_layers, x, (mask, cos, sin),
                                  cache, index)
        h = RMSNorm(c.rms_norm_eps, dt, name="norm")(x)  # [B, T, d]
        logits = None
        if compute_logits:
            if c.tie_word_embeddings:
                logits = embed.attend(h)
            else:
                logits = nn.Dense(c.vocab_size, use_bias=False, dtype=dt, param_dtype=jnp.float32,
                                  kernel_init=init, name="lm_head")(h)
            logits = logits.astype(jnp.float32)  # [B, T, V]
        new_cache = None
        if cache is not None:
            new_cache = KVCache(k=kv[0], v=kv[1], index=index + input_ids.shape[1])
        return LMOutput(logits=logits, hidden_states=h, cache=new_cache)


# Family-neutral names: `hf.model_module(config.kind).Model(config)` works for every LM.
Config = LlamaConfig
Model = LlamaForCausalLM


def init_params(config: LlamaConfig, rng: jax.Array) -> dict:
    """Random float32 params (HF init: N(0, 0.02) weights, unit norms, zero biases)."""
    model = LlamaForCausalLM(config)
    return jax.jit(model.init)(rng, jnp.zeros((1, 1), jnp.int32))["params"]


# --------------------------------------------------------------------------- HF conversion
def hf_key_map(config: LlamaConfig) -> common.KeyMap:
    """HF key -> (Flax path, transpose?); every nn.Linear weight is transposed."""
    km: dict[str, tuple[tuple[str, ...], bool]] = {
        "model.embed_tokens.weight": (("embed_tokens", "embedding"), False),
        "model.norm.weight": (("norm", "weight"), False),
    }
    linears = [("self_attn", n, config.attention_bias) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
    linears += [("mlp", n, config.mlp_bias) for n in ("gate_proj", "up_proj", "down_proj")]
    for i in range(config.num_layers):
        pre, path = f"model.layers.{i}", f"layers_{i}"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            km[f"{pre}.{norm}.weight"] = ((path, norm, "weight"), False)
        for mod, name, bias in linears:
            km[f"{pre}.{mod}.{name}.weight"] = ((path, mod, name, "kernel"), True)
            if bias:
                km[f"{pre}.{mod}.{name}.bias"] = ((path, mod, name, "bias"), False)
    if not config.tie_word_embeddings:
        km["lm_head.weight"] = (("lm_head", "kernel"), True)
    return km


def params_from_hf(state_dict: Mapping[str, np.ndarray], config: LlamaConfig,
                   source: str = "LLaMA state dict") -> dict:
    """HF LLaMA state dict -> float32 Flax params (transposes nn.Linear weights).

    Ignores `rotary_emb.inv_freq` buffers (recomputed from the config). With a tied config an
    `lm_head.weight` is accepted only if it equals the embedding.
    """
    sd = dict(state_dict)
    if config.tie_word_embeddings:
        common.drop_tied_head(sd, "lm_head.weight", "model.embed_tokens.weight", source)
    unrolled = config.replace(scan_layers=False)  # HF keys are per layer; stacked afterwards
    expected = common.flat_shapes(common.abstract_params(LlamaForCausalLM(unrolled)))
    params = common.params_from_state_dict(sd, hf_key_map(config), expected,
                                           ignored=lambda k: k.endswith("rotary_emb.inv_freq"),
                                           source=source)
    return layout.to_layout(params, config, source)


def params_to_hf(params, config: LlamaConfig) -> dict[str, np.ndarray]:
    """Flax params (either layout) -> HF `LlamaForCausalLM` state dict."""
    unrolled = config.replace(scan_layers=False)
    return common.params_to_state_dict(layout.to_layout(params, unrolled), hf_key_map(config))
