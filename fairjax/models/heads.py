"""Value / Q heads: `MLPHead` = Dense(hidden_mult*d) -> ReLU -> Dense(out).

Same shape as upstream ILQL heads (`nn.Sequential(Linear(d, 2d), ReLU(), Linear(2d, out))`), so a
torch state dict `{prefix}.0.weight [2d, d]`, `.0.bias`, `.2.weight [out, 2d]`, `.2.bias` maps to
`{"fc_in": {kernel [d, 2d], bias}, "fc_out": {kernel [2d, out], bias}}`; the transposes happen in
`head_params_from_torch` / `head_params_to_torch`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fairjax.errors import CheckpointMismatchError
from fairjax.models.common import compute_dtype

# torch nn.Linear default init: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _torch_bias_init(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class MLPHead(nn.Module):
    """x [..., d] -> [..., out_features] float32 (computed in `dtype`, params float32)."""

    out_features: int
    hidden_mult: int = 2
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dt = compute_dtype(self.dtype)
        d = x.shape[-1]
        hidden = self.hidden_mult * d
        h = nn.Dense(hidden, dtype=dt, param_dtype=jnp.float32, kernel_init=_torch_kernel_init,
                     bias_init=_torch_bias_init(d), name="fc_in")(x)
        h = nn.relu(h)
        y = nn.Dense(self.out_features, dtype=dt, param_dtype=jnp.float32,
                     kernel_init=_torch_kernel_init, bias_init=_torch_bias_init(hidden),
                     name="fc_out")(h)
        return y.astype(jnp.float32)



def apply_mlp_head(p, hidden: jax.Array, dtype: str = "float32") -> jax.Array:
    """`MLPHead` params (sizes read from the kernels), hidden [..., d] -> [..., out] float32."""
    d_in, width = p["fc_in"]["kernel"].shape
    head = MLPHead(out_features=p["fc_out"]["kernel"].shape[-1], hidden_mult=width // d_in,
                   dtype=dtype)
    return head.apply({"params": p}, hidden)


_TORCH_LAYERS = (("fc_in", "0"), ("fc_out", "2"))


def _key(prefix: str, idx: str, name: str) -> str:
    return f"{prefix}.{idx}.{name}" if prefix else f"{idx}.{name}"


def head_params_from_torch(state_dict: Mapping[str, np.ndarray], prefix: str) -> dict:
    """torch `Sequential(Linear, ReLU, Linear)` weights under `prefix` -> MLPHead params."""
    want = [_key(prefix, idx, n) for _, idx in _TORCH_LAYERS for n in ("weight", "bias")]
    missing = [k for k in want if k not in state_dict]
    mismatched = {}
    if not missing:
        for _, idx in _TORCH_LAYERS:
            w, b = (np.asarray(state_dict[_key(prefix, idx, n)]) for n in ("weight", "bias"))
            if w.ndim != 2 or b.shape != (w.shape[0],):
                mismatched[_key(prefix, idx, "bias")] = ((w.shape[0] if w.ndim else -1,), b.shape)
        w_in = np.asarray(state_dict[want[0]])
        w_out = np.asarray(state_dict[want[2]])
        if w_out.ndim == 2 and w_in.ndim == 2 and w_out.shape[1] != w_in.shape[0]:
            mismatched[want[2]] = ((w_out.shape[0], w_in.shape[0]), w_out.shape)
    if missing or mismatched:
        raise CheckpointMismatchError(missing=missing, mismatched=mismatched,
                                      source=f"head {prefix!r}")
    return {
        name: {"kernel": np.ascontiguousarray(np.asarray(state_dict[_key(prefix, idx, "weight")],
                                                         np.float32).T),
               "bias": np.asarray(state_dict[_key(prefix, idx, "bias")], np.float32)}
        for name, idx in _TORCH_LAYERS
    }


def head_params_to_torch(params, prefix: str) -> dict[str, np.ndarray]:
    """MLPHead params -> torch state-dict entries `{prefix}.0.weight [out, in]` etc."""
    out = {}
    for name, idx in _TORCH_LAYERS:
        out[_key(prefix, idx, "weight")] = np.ascontiguousarray(np.asarray(params[name]["kernel"]).T)
        out[_key(prefix, idx, "bias")] = np.asarray(params[name]["bias"])
    return out


# ------------------------------------------------------------------------ attention value head
@dataclasses.dataclass(frozen=True)
class ValueHeadConfig:
    """num_heads: attention heads of the pooling (upstream 8); max_value: V = σ(·)·max_value, None =
    linear output; dropout: on the hidden states and the pooled vector (upstream 0.1)."""

    num_heads: int = 8
    max_value: Optional[float] = 1.0
    dropout: float = 0.1
    hidden_mult: int = 2


class AttentionValueHead(nn.Module):
    """V(x): hidden [B, T, d] (reference LM, final layer), prompt_mask [B, T] -> [B] float32."""

    config: ValueHeadConfig = ValueHeadConfig()

    @nn.compact
    def __call__(self, hidden: jax.Array, prompt_mask: jax.Array, deterministic: bool = True):
        c = self.config
        B, T, d = hidden.shape
        x = nn.Dropout(c.dropout)(hidden.astype(jnp.float32), deterministic=deterministic)
        query = self.param("query", nn.initializers.normal(0.02), (d,), jnp.float32)
        q = jnp.broadcast_to(query, (B, 1, d))
        mask = prompt_mask.astype(bool)[:, None, None, :]  # [B, 1 (heads), 1 (query), T]
        pooled = nn.MultiHeadDotProductAttention(num_heads=c.num_heads, qkv_features=d,
                                                 out_features=d, name="attn")(q, x, mask=mask)
        pooled = nn.Dropout(c.dropout)(pooled[:, 0], deterministic=deterministic)  # [B, d]
        v = MLPHead(1, hidden_mult=c.hidden_mult, name="mlp")(pooled)[:, 0]
        if c.max_value is not None:
            v = jax.nn.sigmoid(v) * c.max_value
        return v


def init_value_head(rng: jax.Array, hidden_size: int, cfg: ValueHeadConfig = ValueHeadConfig()):
    """Random AttentionValueHead params for hidden size d."""
    return AttentionValueHead(cfg).init(rng, jnp.zeros((1, 2, hidden_size)), jnp.ones((1, 2)))["params"]


def predict_values(params: Any, hidden: jax.Array, prompt_mask: jax.Array,
                   cfg: ValueHeadConfig = ValueHeadConfig()) -> jax.Array:
    """Deterministic V(x).  hidden: [N, T, d]; prompt_mask: [N, T] -> [N]."""
    return AttentionValueHead(cfg).apply({"params": params}, hidden, prompt_mask)
