"""GPT-2 in Flax Linen, numerically equal to Hugging Face `GPT2LMHeadModel`.

Learned position embeddings, pre-LayerNorm blocks, GELU-new MLP, LM head tied to `wte`.
Param tree mirrors HF names: `wte/embedding`, `wpe/embedding`,
`h_{i}/{ln_1, attn/c_attn, attn/c_proj, ln_2, mlp/c_fc, mlp/c_proj}`, `ln_f`
(LayerNorm `weight` -> `scale`). HF's `Conv1D` stores weights `[in, out]`, which is already a
Flax Dense `kernel`: **no transpose for GPT-2** (only an untied `lm_head.weight`, a torch
`nn.Linear` `[V, d]`, is transposed, in `params_from_hf`/`params_to_hf`).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, ClassVar, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from fairjax.errors import ConfigError
from fairjax.models import common, layout
from fairjax.models.common import KVCache, LMOutput

ACTIVATIONS = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}

@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """GPT-2 hyper-parameters (HF `GPT2Config` semantics) + fairjax run options.

    dtype: compute dtype name (params are always float32); remat: a key of common.REMAT_POLICIES (none | block | dots | dots_saveable | offload).
    """

    kind: ClassVar[str] = "gpt2"
    vocab_size: int = 50257
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    max_positions: int = 1024
    intermediate_size: Optional[int] = None  # HF n_inner; None -> 4 * hidden_size
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    resid_pdrop: float = 0.1
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    bos_token_id: Optional[int] = 50256
    eos_token_id: Optional[int] = 50256
    pad_token_id: Optional[int] = None
    dtype: str = "float32"
    remat: str = "none"
    attention_impl: str = "xla"  # "xla" (exact einsum) | "cudnn" (fused, GPU) | "auto"
    scan_layers: bool = False  # blocks under nn.scan: params `h/...` stacked [L, ...] (models/layout.py)
    hf_extra: tuple = ()  # other config.json entries, (key, json) pairs, written back by to_hf

    def __post_init__(self):
        common.check_choice("activation_function", self.activation_function, list(ACTIVATIONS))
        common.check_choice("remat", self.remat, list(common.REMAT_POLICIES))
        common.check_choice("attention_impl", self.attention_impl, list(common.ATTENTION_IMPLS))
        common.compute_dtype(self.dtype)
        common.check_scan_layers(self.scan_layers)
        if self.scan_layers and self.scale_attn_by_inverse_layer_idx:
            raise ConfigError("scan_layers=True runs one block body for every layer, so the "
                              "per-layer scale of scale_attn_by_inverse_layer_idx=True is not "
                              "available; set scan_layers=False for this checkpoint")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size={self.hidden_size} is not divisible by "
                              f"num_heads={self.num_heads}")

    @property
    def num_kv_heads(self) -> int:
        return self.num_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_dim(self) -> int:
        return self.intermediate_size or 4 * self.hidden_size

    _HF_NAMES: ClassVar[dict[str, str]] = {
        "vocab_size": "vocab_size", "n_embd": "hidden_size", "n_layer": "num_layers",
        "n_head": "num_heads", "n_positions": "max_positions", "n_inner": "intermediate_size",
        "layer_norm_epsilon": "layer_norm_epsilon", "activation_function": "activation_function",
        "embd_pdrop": "embd_pdrop", "attn_pdrop": "attn_pdrop", "resid_pdrop": "resid_pdrop",
        "scale_attn_weights": "scale_attn_weights",
        "scale_attn_by_inverse_layer_idx": "scale_attn_by_inverse_layer_idx",
        "tie_word_embeddings": "tie_word_embeddings", "initializer_range": "initializer_range",
        "bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id",
        "pad_token_id": "pad_token_id",
    }

    @classmethod
    def from_hf(cls, d: Mapping[str, Any], **overrides) -> "GPT2Config":
        """From a HF GPT-2 config.json dict; `overrides` set fairjax fields (dtype, remat...)."""
        if d.get("model_type", "gpt2") != "gpt2":
            raise ConfigError(f"model_type={d.get('model_type')!r}; GPT2Config expects 'gpt2'")
        if d.get("reorder_and_upcast_attn"):
            # Our attention always computes scores in float32, which is what this flag asks for.
            pass
        kwargs = {ours: d[hf] for hf, ours in cls._HF_NAMES.items() if hf in d}
        consumed = set(cls._HF_NAMES) | {"reorder_and_upcast_attn"}
        kwargs["hf_extra"] = common.split_hf_extras(d, consumed)
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf(self) -> dict[str, Any]:
        """HF config.json dict (loads with `transformers.AutoConfig`)."""
        out = common.join_hf_extras(self.hf_extra)
        out.update({hf: getattr(self, ours) for hf, ours in self._HF_NAMES.items()})
        out.update({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "dtype": "float32",
                    "reorder_and_upcast_attn": False})
        return dict(sorted(out.items()))

    def replace(self, **kw) -> "GPT2Config":
        return dataclasses.replace(self, **kw)

    def partition_rules(self) -> list[tuple[str, P]]:
        """Regex on '/'-joined param path -> PartitionSpec over ('data', 'fsdp', 'tensor')."""
        return common.layer_axis_rules(self, "h", [
            (r"wte/embedding$", P("tensor", "fsdp")),
            (r"wpe/embedding$", P(None, "fsdp")),
            (r"attn/c_attn/kernel$", P("fsdp", "tensor")),
            (r"attn/c_proj/kernel$", P("tensor", "fsdp")),
            (r"mlp/c_fc/kernel$", P("fsdp", "tensor")),
            (r"mlp/c_proj/kernel$", P("tensor", "fsdp")),
            (r"lm_head/kernel$", P("fsdp", "tensor")),
            (r"(ln_1|ln_2|ln_f)/(scale|bias)$", P()),
            (r"/bias$", P()),
            (r".*", P()),
        ])


# Size presets reused by the benchmarks (random-init shapes of the released GPT-2 models).
PRESETS: dict[str, GPT2Config] = {
    "tiny": GPT2Config(vocab_size=1006, hidden_size=64, num_layers=2, num_heads=4, max_positions=128),
    # CPU-sized from-scratch studies (docs/study.md): 4 layers, d=256 (3.2M + vocab x 256 params)
    "mini": GPT2Config(hidden_size=256, num_layers=4, num_heads=4, max_positions=1024),
    "small": GPT2Config(),  # 124M
    "medium": GPT2Config(hidden_size=1024, num_layers=24, num_heads=16),  # 355M
    "large": GPT2Config(hidden_size=1280, num_layers=36, num_heads=20),  # 774M
}


def _layer_norm(config: GPT2Config, name: str) -> nn.LayerNorm:
    # use_fast_variance=False: var = mean((x - mean)^2) like torch, not E[x^2] - E[x]^2.
    return nn.LayerNorm(epsilon=config.layer_norm_epsilon, dtype=common.compute_dtype(config.dtype),
                        param_dtype=jnp.float32, use_fast_variance=False, name=name)


def _dense(config: GPT2Config, features: int, name: str, std: Optional[float] = None) -> nn.Dense:
    return nn.Dense(features, dtype=common.compute_dtype(config.dtype), param_dtype=jnp.float32,
                    kernel_init=nn.initializers.normal(std or config.initializer_range), name=name)


class GPT2Attention(nn.Module):
    config: GPT2Config
    layer_idx: int
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, mask, layer_cache, cache_index):
        """x: [B, T, d]; mask: [B, 1, T, S] bool; layer_cache: (k, v) [B, H, S_max, Dh] or None."""
        c = self.config
        b, t, d = x.shape
        out_std = c.initializer_range / math.sqrt(2 * c.num_layers)
        qkv = _dense(c, 3 * d, "c_attn")(x)  # [B, T, 3d] = [q | k | v]
        q, k, v = (a.reshape(b, t, c.num_heads, c.head_dim) for a in jnp.split(qkv, 3, axis=-1))
        new_cache = None
        if layer_cache is not None:
            k, v = new_cache = common.update_cache_layer(*layer_cache, k, v, cache_index)
        scale = 1.0 / math.sqrt(c.head_dim) if c.scale_attn_weights else 1.0
        if c.scale_attn_by_inverse_layer_idx:
            scale /= float(self.layer_idx + 1)
        y = common.attention(q, k, v, mask, scale, impl=c.attention_impl,
                             kv_layout="bshd" if layer_cache is None else "bhsd",
                             dropout=common.attention_dropout(c.attn_pdrop, self.deterministic))
        y = _dense(c, d, "c_proj", std=out_std)(y.reshape(b, t, d))
        return nn.Dropout(c.resid_pdrop)(y, deterministic=self.deterministic), new_cache


class GPT2MLP(nn.Module):
    config: GPT2Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x):  # [B, T, d]
        c = self.config
        h = ACTIVATIONS[c.activation_function](_dense(c, c.mlp_dim, "c_fc")(x))
        y = _dense(c, x.shape[-1], "c_proj", std=c.initializer_range / math.sqrt(2 * c.num_layers))(h)
        return nn.Dropout(c.resid_pdrop)(y, deterministic=self.deterministic)


class GPT2Block(nn.Module):
    config: GPT2Config
    layer_idx: int
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, mask, layer_cache, cache_index):
        """Pre-LN block: x + attn(ln_1(x)), then + mlp(ln_2(.)). x: [B, T, d]."""
        c = self.config
        a, new_cache = GPT2Attention(c, self.layer_idx, self.deterministic, name="attn")(
            _layer_norm(c, "ln_1")(x), mask, layer_cache, cache_index)
        x = x + a
        x = x + GPT2MLP(c, self.deterministic, name="mlp")(_layer_norm(c, "ln_2")(x))
        return x, new_cache


class GPT2LMHeadModel(nn.Module):
    """GPT-2 LM. Call: (input_ids [B,T], attention_mask [B,T] or [B,S_max] with cache,
    position_ids [B,T], cache, compute_logits, deterministic, segment_ids [B,T] (packed rows:
    attention stays within a segment, positions restart per segment)) -> LMOutput."""

    config: GPT2Config

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, position_ids=None, cache: KVCache | None = None,
                 compute_logits: bool = True, deterministic: bool = True,
                 segment_ids=None) -> LMOutput:
        c = self.config
        dt = common.compute_dtype(c.dtype)
        mask, pos, index = common.attention_mask_and_positions(input_ids, attention_mask,
                                                               position_ids, cache, segment_ids)
        init = nn.initializers.normal(c.initializer_range)
        wte = nn.Embed(c.vocab_size, c.hidden_size, dtype=dt, param_dtype=jnp.float32,
                       embedding_init=init, name="wte")
        wpe = nn.Embed(c.max_positions, c.hidden_size, dtype=dt, param_dtype=jnp.float32,
                       embedding_init=init, name="wpe")
        x = wte(input_ids) + wpe(pos)  # [B, T, d]
        self.sow("intermediates", "embeddings", x)
        x = nn.Dropout(c.embd_pdrop)(x, deterministic=deterministic)
        block = common.remat_block(GPT2Block, c.remat)
        x, kv = common.run_blocks(self, lambda i, name: block(c, i, deterministic, name=name),
                                  c.num_layers, "h", c.scan_layers, x, (mask,), cache, index)
        h = _layer_norm(c, "ln_f")(x)  # [B, T, d]
        logits = None
        if compute_logits:
            if c.tie_word_embeddings:
                logits = wte.attend(h)
            else:
                logits = nn.Dense(c.vocab_size, use_bias=False, dtype=dt, param_dtype=jnp.float32,
                                  kernel_init=init, name="lm_head")(h)
            logits = logits.astype(jnp.float32)  # [B, T, V]
        new_cache = None
        if cache is not None:
            new_cache = KVCache(k=kv[0], v=kv[1], index=index + input_ids.shape[1])
        return LMOutput(logits=logits, hidden_states=h, cache=new_cache)


# Family-neutral names: `hf.model_module(config.kind).Model(config)` works for every LM.
Config = GPT2Config
Model = GPT2LMHeadModel


def init_params(config: GPT2Config, rng: jax.Array) -> dict:
    """Random float32 params (HF init: N(0, 0.02), c_proj scaled by 1/sqrt(2L), zero biases)."""
    model = GPT2LMHeadModel(config)
    ids = jnp.zeros((1, 1), jnp.int32)
    return jax.jit(model.init)(rng, ids)["params"]


# --------------------------------------------------------------------------- HF conversion
_BUFFER = re.compile(r"^(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)$")  # old causal-mask buffers


def hf_key_map(config: GPT2Config, prefix: str = "transformer.") -> common.KeyMap:
    """HF key -> (Flax path, transpose?). `prefix` is `transformer.` (GPT2LMHeadModel) or ''
    (GPT2Model / the original OpenAI checkpoints); `lm_head.weight` never has it."""
    km: dict[str, tuple[tuple[str, ...], bool]] = {
        f"{prefix}wte.weight": (("wte", "embedding"), False),
        f"{prefix}wpe.weight": (("wpe", "embedding"), False),
        f"{prefix}ln_f.weight": (("ln_f", "scale"), False),
        f"{prefix}ln_f.bias": (("ln_f", "bias"), False),
    }
    for i in range(config.num_layers):
        for ln in ("ln_1", "ln_2"):
            km[f"{prefix}h.{i}.{ln}.weight"] = ((f"h_{i}", ln, "scale"), False)
            km[f"{prefix}h.{i}.{ln}.bias"] = ((f"h_{i}", ln, "bias"), False)
        for mod, sub in (("attn", "c_attn"), ("attn", "c_proj"), ("mlp", "c_fc"), ("mlp", "c_proj")):
            # Conv1D weight is [in, out] == Flax kernel: no transpose
            km[f"{prefix}h.{i}.{mod}.{sub}.weight"] = ((f"h_{i}", mod, sub, "kernel"), False)
            km[f"{prefix}h.{i}.{mod}.{sub}.bias"] = ((f"h_{i}", mod, sub, "bias"), False)
    if not config.tie_word_embeddings:
        km["lm_head.weight"] = (("lm_head", "kernel"), True)  # nn.Linear [V, d] -> [d, V]
    return km


def params_from_hf(state_dict: Mapping[str, np.ndarray], config: GPT2Config,
                   source: str = "GPT-2 state dict") -> dict:
    """HF GPT-2 state dict (keys with or without `transformer.`) -> float32 Flax params.

    Ignores the old `attn.bias`/`attn.masked_bias` buffers. With a tied config an
    `lm_head.weight` is accepted only if it equals `wte.weight` (else the checkpoint was
    trained untied and dropping it would silently change the model).
    """
    sd = dict(state_dict)
    prefix = "transformer." if any(k.startswith("transformer.") for k in sd) else ""
    if config.tie_word_embeddings:
        common.drop_tied_head(sd, "lm_head.weight", f"{prefix}wte.weight", source)
    unrolled = config.replace(scan_layers=False)  # HF keys are per layer; stacked afterwards
    expected = common.flat_shapes(common.abstract_params(GPT2LMHeadModel(unrolled)))
    params = common.params_from_state_dict(sd, hf_key_map(config, prefix), expected,
                                           ignored=lambda k: bool(_BUFFER.match(k)), source=source)
    return layout.to_layout(params, config, source)


def params_to_hf(params, config: GPT2Config) -> dict[str, np.ndarray]:
    """Flax params (either layout) -> HF `GPT2LMHeadModel` state dict (`transformer.` keys, no
    tied lm_head)."""
    unrolled = config.replace(scan_layers=False)
    return common.params_to_state_dict(layout.to_layout(params, unrolled), hf_key_map(config))
