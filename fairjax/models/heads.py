"""Value / Q heads: `MLPHead` = Dense(hidden_mult*d) -> ReLU -> Dense(out).

Same shape as upstream ILQL heads (`nn.Sequential(Linear(d, 2d), ReLU(), Linear(2d, out))`), so a
torch state dict `{prefix}.0.weight [2d, d]`, `.0.bias`, `.2.weight [out, 2d]`, `.2.bias` maps to
`{"fc_in": {kernel [d, 2d], bias}, "fc_out": {kernel [2d, out], bias}}`; the transposes happen in
`head_params_from_torch` / `head_params_to_torch`.
"""
from __future__ import annotations

import math
from typing import Mapping

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
