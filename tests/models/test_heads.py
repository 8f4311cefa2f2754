"""MLPHead and its torch Sequential(Linear, ReLU, Linear) mapping."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax.errors import CheckpointMismatchError
from fairjax.models.heads import MLPHead, head_params_from_torch, head_params_to_torch


def test_mlp_head_matches_torch_formula():
    d, out = 8, 5
    rng = np.random.default_rng(0)
    sd = {"q.0.weight": rng.normal(size=(2 * d, d)).astype(np.float32),
          "q.0.bias": rng.normal(size=(2 * d,)).astype(np.float32),
          "q.2.weight": rng.normal(size=(out, 2 * d)).astype(np.float32),
          "q.2.bias": rng.normal(size=(out,)).astype(np.float32)}
    params = head_params_from_torch(sd, "q")
    fresh = MLPHead(out).init(jax.random.PRNGKey(0), jnp.zeros((1, d)))["params"]
    assert jax.tree_util.tree_map(np.shape, fresh) == jax.tree_util.tree_map(np.shape, params)
    x = rng.normal(size=(3, 4, d)).astype(np.float32)
    want = np.maximum(x @ sd["q.0.weight"].T + sd["q.0.bias"], 0) @ sd["q.2.weight"].T + sd["q.2.bias"]
    got = MLPHead(out).apply({"params": params}, x)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert MLPHead(out, dtype="bfloat16").apply({"params": params}, x).dtype == jnp.float32
    back = head_params_to_torch(params, "q")
    assert sorted(back) == sorted(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])


def test_missing_head_keys_are_named():
    with pytest.raises(CheckpointMismatchError, match="v.2.weight"):
        head_params_from_torch({"v.0.weight": np.zeros((4, 2)), "v.0.bias": np.zeros(4)}, "v")
