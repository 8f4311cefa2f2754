"""MPNet encoder in Flax Linen, numerically equal to Hugging Face `MPNetModel` (all-mpnet-base-v2).

transformers has no Flax MPNet; this port follows the PyTorch model's semantics:

* embeddings: word + absolute position, LayerNorm (no token types). Position ids come from the
  input ids: non-padding tokens are numbered from `padding_idx + 1` in order, padding tokens get
  `padding_idx`; MPNet fixes `padding_idx` at 1 whatever the config's pad_token_id says.
* a T5-style relative position bias shared by every layer: the offset key − query is put in one of
  32 log-spaced buckets (half for each direction, exact up to 8, logarithmic up to 128), and a
  `[buckets, heads]` table gives a per-head bias added to every layer's attention scores. The
  bucket count is 32 in the computation even when the config's `relative_attention_num_buckets`
  (the table size) differs, as in transformers.
* post-LayerNorm layers like BERT's: attention (q, k, v, o) -> add & LayerNorm -> intermediate
  (GELU) -> dense -> add & LayerNorm; `layer_norm_eps` from the config (1e-5 for MPNet).

Param tree: `embeddings/{word_embeddings,position_embeddings}/embedding`, `embeddings/LayerNorm`,
`relative_attention_bias/embedding`, `layer_{i}/attention/attn/{q,k,v,o}`,
`layer_{i}/attention/LayerNorm`, `layer_{i}/intermediate/dense`, `layer_{i}/output/{dense,LayerNorm}`,
`pooler/dense`. HF keys (with or without `mpnet.`) map through `params_from_hf`.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, ClassVar, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fairjax.errors import ConfigError
from fairjax.models import bert, common
from fairjax.models.bert import BertOutput, _AddNorm, _dense, _Intermediate, _ln, _Pooler

PADDING_IDX = 1  # transformers' MPNetEmbeddings hard-codes it
NUM_BUCKETS, MAX_DISTANCE = 32, 128  # what MPNetEncoder.compute_position_bias uses


@dataclasses.dataclass(frozen=True)
class MPNetConfig(bert.BertConfig):
    """MPNet hyper-parameters (HF `MPNetConfig` semantics): BertConfig's fields (no token types)
    with MPNet's defaults, plus the size of the relative-position table."""

    kind: ClassVar[str] = "mpnet"
    vocab_size: int = 30527
    max_positions: int = 514
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    relative_attention_num_buckets: int = 32

    _ARCH: ClassVar[str] = "MPNetModel"
    _HF_EXTRA: ClassVar[dict[str, Any]] = {}
    _HF_NAMES: ClassVar[dict[str, str]] = {
        **{k: v for k, v in bert.BertConfig._HF_NAMES.items() if k != "type_vocab_size"},
        "relative_attention_num_buckets": "relative_attention_num_buckets",
    }

    def __post_init__(self):
        super().__post_init__()
        if self.relative_attention_num_buckets < NUM_BUCKETS:
            raise ConfigError(f"relative_attention_num_buckets={self.relative_attention_num_buckets}: "
                              f"MPNet computes {NUM_BUCKETS} buckets, the table needs at least as many rows")

    @property
    def max_length(self) -> int:
        """Longest input: positions run from PADDING_IDX + 1 to max_positions − 1."""
        return self.max_positions - PADDING_IDX - 1


def relative_position_bucket(relative_position: jax.Array) -> jax.Array:
    """Bucket of each offset key − query ([..] int) in [0, NUM_BUCKETS): the upper half for
    keys before the query, exact below 8, log-spaced up to MAX_DISTANCE, clipped after."""
    half = NUM_BUCKETS // 2
    n = -relative_position
    ret = jnp.where(n < 0, half, 0)
    n = jnp.abs(n)
    max_exact = half // 2
    scaled = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact) / math.log(MAX_DISTANCE / max_exact)
    large = jnp.minimum(max_exact + (scaled * (half - max_exact)).astype(jnp.int32), half - 1)
    return ret + jnp.where(n < max_exact, n, large)


def position_ids_from_input_ids(input_ids: jax.Array) -> jax.Array:
    """[B, T] -> [B, T]: PADDING_IDX + running count of non-padding tokens (PADDING_IDX at pads)."""
    mask = (input_ids != PADDING_IDX).astype(jnp.int32)
    return jnp.cumsum(mask, axis=1) * mask + PADDING_IDX


class MPNetSelfAttention(nn.Module):
    config: MPNetConfig

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        """x [B, T, d]; bias [B, H, T, T] (position bias + mask) -> o(attention) [B, T, d]."""
        c = self.config
        return _dense(c, c.hidden_size, "o")(bert.attend(c, x, bias, ("q", "k", "v")))


class MPNetAttention(nn.Module):
    config: MPNetConfig

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        """LayerNorm(attn(x) + x): [B, T, d] -> [B, T, d]."""
        c = self.config
        h = MPNetSelfAttention(c, name="attn")(x, bias)
        return _ln(c, "LayerNorm")(h + x).astype(common.compute_dtype(c.dtype))


class MPNetLayer(nn.Module):
    config: MPNetConfig

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        """One post-LN layer: [B, T, d] -> [B, T, d]."""
        c = self.config
        h = MPNetAttention(c, name="attention")(x, bias)
        return _AddNorm(c, name="output")(_Intermediate(c, name="intermediate")(h), h)


class MPNetModel(nn.Module):
    """`apply({"params": p}, input_ids[B,T], attention_mask[B,T]|None)` -> BertOutput."""

    config: MPNetConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: Optional[jax.Array] = None) -> BertOutput:
        c = self.config
        cdt = common.compute_dtype(c.dtype)
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        t = input_ids.shape[1]
        init = nn.initializers.normal(0.02)
        x = _Embeddings(c, name="embeddings")(input_ids)
        table = nn.Embed(c.relative_attention_num_buckets, c.num_heads, embedding_init=init,
                         name="relative_attention_bias")
        rel = jnp.arange(t)[None, :] - jnp.arange(t)[:, None]  # [T(query), T(key)]: key − query
        pos_bias = jnp.transpose(table(relative_position_bucket(rel)), (2, 0, 1))[None]  # [1, H, T, T]
        mask = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, common.MASK_VALUE)  # [B, 1, 1, T]
        bias = (pos_bias.astype(jnp.float32) + mask).astype(jnp.float32)  # [B, H, T, T]
        x = x.astype(cdt)
        for i in range(c.num_layers):
            x = MPNetLayer(c, name=f"layer_{i}")(x, bias)
        x = x.astype(jnp.float32)
        pooled = _Pooler(c, name="pooler")(x[:, 0]) if c.add_pooling_layer else None
        return BertOutput(x, pooled)


class _Embeddings(nn.Module):
    config: MPNetConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> jax.Array:
        """LayerNorm(word + position): [B, T] ids -> [B, T, d] float32."""
        c = self.config
        init = nn.initializers.normal(0.02)
        word = nn.Embed(c.vocab_size, c.hidden_size, embedding_init=init, name="word_embeddings")
        pos = nn.Embed(c.max_positions, c.hidden_size, embedding_init=init, name="position_embeddings")
        return _ln(c, "LayerNorm")(word(input_ids) + pos(position_ids_from_input_ids(input_ids)))


# --------------------------------------------------------------------------- HF conversion
def hf_key_map(config: MPNetConfig) -> common.KeyMap:
    """HF key (without the `mpnet.` prefix) -> (Flax path, transpose?)."""
    km: dict[str, tuple[tuple[str, ...], bool]] = {}
    ln, lin = bert.key_map_adders(km)
    for name in ("word_embeddings", "position_embeddings"):
        km[f"embeddings.{name}.weight"] = (("embeddings", name, "embedding"), False)
    ln("embeddings.LayerNorm", ("embeddings", "LayerNorm"))
    km["encoder.relative_attention_bias.weight"] = (("relative_attention_bias", "embedding"), False)
    for i in range(config.num_layers):
        p, f = f"encoder.layer.{i}", f"layer_{i}"
        for name in ("q", "k", "v", "o"):
            lin(f"{p}.attention.attn.{name}", (f, "attention", "attn", name))
        ln(f"{p}.attention.LayerNorm", (f, "attention", "LayerNorm"))
        bert.ffn_keys(ln, lin, p, f)
    if config.add_pooling_layer:
        lin("pooler.dense", ("pooler", "dense"))
    return km


def _ignored(key: str) -> bool:
    """position_ids buffers and the masked-LM head of `MPNetForMaskedLM` checkpoints."""
    return key.endswith("position_ids") or key.startswith("lm_head.")


def params_from_hf(state_dict: Mapping[str, np.ndarray], config: MPNetConfig,
                   source: str = "MPNet state dict") -> dict:
    """HF MPNet state dict (keys with or without `mpnet.`) -> float32 Flax params."""
    return bert.encoder_params_from_hf(state_dict, config, MPNetModel(config), hf_key_map(config),
                                       "mpnet.", _ignored, source)


def params_to_hf(params, config: MPNetConfig) -> dict[str, np.ndarray]:
    """Flax params -> HF `MPNetModel` state dict."""
    return common.params_to_state_dict(params, hf_key_map(config))


def load_hf_dir(path: str | Path, **overrides) -> tuple[MPNetModel, dict, MPNetConfig]:
    """(module, params, config) from a HF MPNet directory (config.json + model.safetensors)."""
    cfg, sd, has_pooler = bert.read_hf_dir(path, "MPNet", "mpnet.")
    config = MPNetConfig.from_hf(cfg, add_pooling_layer=has_pooler, **overrides)
    return MPNetModel(config), params_from_hf(sd, config, source=str(Path(path) / "model.safetensors")), config
