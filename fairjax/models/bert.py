"""BERT encoder in Flax Linen, numerically equal to Hugging Face `BertModel` (the reward embedder).

Embeddings (word + position + token-type, LayerNorm), post-LayerNorm encoder layers (self-attention
-> dense -> add & LayerNorm -> intermediate GELU (exact erf) -> dense -> add & LayerNorm) and the
optional tanh pooler over [CLS]. FMs-at-work embeds job texts and candidate profiles with the [CLS]
vector of `last_hidden_state` (not the pooler), reference §4.4.

Param tree mirrors HF names (`encoder.layer.{i}` -> `layer_{i}`, LayerNorm `weight` -> `scale`):
`embeddings/{word_embeddings,position_embeddings,token_type_embeddings}/embedding`,
`embeddings/LayerNorm`, `layer_{i}/attention/self/{query,key,value}`,
`layer_{i}/attention/output/{dense,LayerNorm}`, `layer_{i}/intermediate/dense`,
`layer_{i}/output/{dense,LayerNorm}`, `pooler/dense`. HF `nn.Linear` weights are `[out, in]`; the
transpose to Flax `kernel [in, out]` happens in `params_from_hf` / `params_to_hf` only.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, ClassVar, Mapping, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fairjax.errors import ConfigError
from fairjax.models import common

_ACT = {"gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "relu": jax.nn.relu}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """BERT hyper-parameters (HF `BertConfig` semantics); dtype = compute dtype name."""

    kind: ClassVar[str] = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    add_pooling_layer: bool = True
    dtype: str = "float32"

    _HF_NAMES: ClassVar[dict[str, str]] = {
        "vocab_size": "vocab_size", "hidden_size": "hidden_size",
        "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
        "intermediate_size": "intermediate_size", "max_position_embeddings": "max_positions",
        "type_vocab_size": "type_vocab_size", "layer_norm_eps": "layer_norm_eps",
        "hidden_act": "hidden_act", "pad_token_id": "pad_token_id",
    }

    def __post_init__(self):
        common.check_choice("hidden_act", self.hidden_act, list(_ACT))
        common.compute_dtype(self.dtype)
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size={self.hidden_size} is not divisible by "
                              f"num_attention_heads={self.num_heads}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    _ARCH: ClassVar[str] = "BertModel"
    _HF_EXTRA: ClassVar[dict[str, Any]] = {"position_embedding_type": "absolute"}

    @classmethod
    def from_hf(cls, d: Mapping[str, Any], **overrides) -> "BertConfig":
        if d.get("model_type", cls.kind) != cls.kind:
            raise ConfigError(f"model_type={d.get('model_type')!r}; {cls.__name__} expects {cls.kind!r}")
        pe = d.get("position_embedding_type", "absolute")
        if pe != "absolute":
            raise ConfigError(f"position_embedding_type={pe!r}; only 'absolute' is supported")
        kwargs = {ours: d[hf] for hf, ours in cls._HF_NAMES.items() if hf in d and d[hf] is not None}
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf(self) -> dict[str, Any]:
        out = {hf: getattr(self, ours) for hf, ours in self._HF_NAMES.items()}
        out.update({"model_type": self.kind, "architectures": [self._ARCH], **self._HF_EXTRA})
        return dict(sorted(out.items()))


class BertOutput(NamedTuple):
    """last_hidden_state [B, T, d] float32; pooler_output [B, d] float32 or None."""

    last_hidden_state: jax.Array
    pooler_output: Optional[jax.Array]


def _ln(config: BertConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=jnp.float32, name=name)


def _dense(config: BertConfig, features: int, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=common.compute_dtype(config.dtype), param_dtype=jnp.float32,
                    kernel_init=nn.initializers.normal(0.02), name=name)


class BertSelfAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        """x [B, T, d]; bias [B, 1, 1, T] additive mask (0 keep, finfo.min drop) -> [B, T, d]."""
        return attend(self.config, x, bias, ("query", "key", "value"))


def attend(c, x: jax.Array, bias: jax.Array, names: tuple[str, str, str]) -> jax.Array:
    """Scaled dot-product self-attention with the projections `names` (created in the calling
    module): x [B, T, d], bias broadcastable to [B, H, T, T] (additive) -> [B, T, d]."""
    b, t, _ = x.shape
    q, k, v = (_dense(c, c.hidden_size, n)(x).reshape(b, t, c.num_heads, c.head_dim) for n in names)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(c.head_dim)
    probs = jax.nn.softmax(scores + bias, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, c.hidden_size)


class BertAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        """attention/{self, output/{dense, LayerNorm}}: x [B, T, d] -> [B, T, d]."""
        c = self.config
        attn = BertSelfAttention(c, name="self")(x, bias)
        return _AddNorm(c, name="output")(attn, x)


class _AddNorm(nn.Module):
    """HF `BertSelfOutput` / `BertOutput`: LayerNorm(residual + dense(h))."""

    config: BertConfig

    @nn.compact
    def __call__(self, h: jax.Array, residual: jax.Array) -> jax.Array:
        """h [B, T, d_in], residual [B, T, d] -> [B, T, d]."""
        c = self.config
        out = _ln(c, "LayerNorm")(residual + _dense(c, c.hidden_size, "dense")(h))
        return out.astype(common.compute_dtype(c.dtype))


class _Intermediate(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        """act(dense(h)): [B, T, d] -> [B, T, d_ff] (GELU exact erf for hidden_act='gelu')."""
        c = self.config
        return _ACT[c.hidden_act](_dense(c, c.intermediate_size, "dense")(h))


class BertLayer(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        """One post-LN encoder layer: x [B, T, d] -> [B, T, d]."""
        c = self.config
        h = BertAttention(c, name="attention")(x, bias)
        return _AddNorm(c, name="output")(_Intermediate(c, name="intermediate")(h), h)


class BertEmbeddings(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        """LayerNorm(word + position + token_type): [B, T] ids -> [B, T, d] (positions 0..T-1)."""
        c = self.config
        init = nn.initializers.normal(0.02)
        t = input_ids.shape[1]
        emb = (nn.Embed(c.vocab_size, c.hidden_size, embedding_init=init, name="word_embeddings")(input_ids)
               + nn.Embed(c.max_positions, c.hidden_size, embedding_init=init,
                          name="position_embeddings")(jnp.arange(t)[None, :])
               + nn.Embed(c.type_vocab_size, c.hidden_size, embedding_init=init,
                          name="token_type_embeddings")(token_type_ids))
        return _ln(c, "LayerNorm")(emb).astype(common.compute_dtype(c.dtype))


class _Pooler(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, cls: jax.Array) -> jax.Array:
        """tanh(dense(h_[CLS])): [B, d] -> [B, d] float32."""
        return jnp.tanh(_dense(self.config, self.config.hidden_size, "dense")(cls).astype(jnp.float32))


class BertModel(nn.Module):
    """`apply({"params": p}, input_ids[B,T], attention_mask[B,T]|None, token_type_ids[B,T]|None)`."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: Optional[jax.Array] = None,
                 token_type_ids: Optional[jax.Array] = None) -> BertOutput:
        c = self.config
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        if token_type_ids is None:
            token_type_ids = jnp.zeros(input_ids.shape, jnp.int32)
        x = BertEmbeddings(c, name="embeddings")(input_ids, token_type_ids)
        bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, common.MASK_VALUE).astype(jnp.float32)
        for i in range(c.num_layers):
            x = BertLayer(c, name=f"layer_{i}")(x, bias)
        x = x.astype(jnp.float32)
        pooled = _Pooler(c, name="pooler")(x[:, 0]) if c.add_pooling_layer else None
        return BertOutput(x, pooled)


# --------------------------------------------------------------------------- HF conversion
def key_map_adders(km: dict) -> tuple:
    """(ln, lin): add the HF LayerNorm / nn.Linear keys `hf.{weight,bias}` of a Flax path to `km`
    (Linear weights `[out, in]` are transposed to `kernel [in, out]`)."""
    def ln(hf: str, path: tuple[str, ...]) -> None:
        km[f"{hf}.weight"] = (path + ("scale",), False)
        km[f"{hf}.bias"] = (path + ("bias",), False)

    def lin(hf: str, path: tuple[str, ...]) -> None:
        km[f"{hf}.weight"] = (path + ("kernel",), True)
        km[f"{hf}.bias"] = (path + ("bias",), False)

    return ln, lin


def hf_key_map(config: BertConfig) -> common.KeyMap:
    """HF key (without the `bert.` prefix) -> (Flax path, transpose?)."""
    km: dict[str, tuple[tuple[str, ...], bool]] = {}
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        km[f"embeddings.{name}.weight"] = (("embeddings", name, "embedding"), False)
    ln, lin = key_map_adders(km)
    ln("embeddings.LayerNorm", ("embeddings", "LayerNorm"))
    for i in range(config.num_layers):
        p, f = f"encoder.layer.{i}", f"layer_{i}"
        for qkv in ("query", "key", "value"):
            lin(f"{p}.attention.self.{qkv}", (f, "attention", "self", qkv))
        lin(f"{p}.attention.output.dense", (f, "attention", "output", "dense"))
        ln(f"{p}.attention.output.LayerNorm", (f, "attention", "output", "LayerNorm"))
        ffn_keys(ln, lin, p, f)
    if config.add_pooling_layer:
        lin("pooler.dense", ("pooler", "dense"))
    return km


def ffn_keys(ln, lin, hf_prefix: str, path: str) -> None:
    """The feed-forward half of a layer: intermediate/dense, output/{dense, LayerNorm}."""
    lin(f"{hf_prefix}.intermediate.dense", (path, "intermediate", "dense"))
    lin(f"{hf_prefix}.output.dense", (path, "output", "dense"))
    ln(f"{hf_prefix}.output.LayerNorm", (path, "output", "LayerNorm"))


def _ignored(key: str) -> bool:
    """position_ids buffers and the MLM/NSP heads of `BertForPreTraining` checkpoints."""
    return key.endswith("position_ids") or key.startswith("cls.")


def params_from_hf(state_dict: Mapping[str, np.ndarray], config: BertConfig,
                   source: str = "BERT state dict") -> dict:
    """HF BERT state dict (keys with or without `bert.`) -> float32 Flax params."""
    return encoder_params_from_hf(state_dict, config, BertModel(config), hf_key_map(config),
                                  "bert.", _ignored, source)


def encoder_params_from_hf(state_dict, config, model: nn.Module, key_map, prefix: str, ignored,
                           source: str) -> dict:
    """State dict (keys with or without `prefix`; the pooler dropped when the config has none)
    -> float32 Flax params of `model`, checked against its abstract shapes."""
    sd = {k.removeprefix(prefix): v for k, v in state_dict.items()}
    if not config.add_pooling_layer:
        sd = {k: v for k, v in sd.items() if not k.startswith("pooler.")}
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32)))
    return common.params_from_state_dict(sd, key_map, common.flat_shapes(abstract["params"]),
                                         ignored=ignored, source=source)


def params_to_hf(params, config: BertConfig) -> dict[str, np.ndarray]:
    """Flax params -> HF `BertModel` state dict."""
    return common.params_to_state_dict(params, hf_key_map(config))


def read_hf_dir(path: str | Path, what: str, prefix: str) -> tuple[dict, dict, bool]:
    """(config.json dict, safetensors state dict, has a pooler) of a HF encoder directory."""
    from safetensors.numpy import load_file  # noqa: PLC0415

    path = Path(path)
    cfg_file, weights = path / "config.json", path / "model.safetensors"
    for f in (cfg_file, weights):
        if not f.is_file():
            raise ConfigError(f"{path}: missing {f.name} (need a HF {what} directory)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{cfg_file}: invalid JSON ({e})") from e
    sd = load_file(str(weights))
    has_pooler = any(k.split(prefix)[-1].startswith("pooler.") for k in sd)
    return cfg, sd, has_pooler


def load_hf_dir(path: str | Path, **overrides) -> tuple[BertModel, dict, BertConfig]:
    """(module, params, config) from a HF BERT directory (config.json + model.safetensors)."""
    cfg, sd, has_pooler = read_hf_dir(path, "BERT", "bert.")
    config = BertConfig.from_hf(cfg, add_pooling_layer=has_pooler, **overrides)
    return BertModel(config), params_from_hf(sd, config, source=str(Path(path) / "model.safetensors")), config
