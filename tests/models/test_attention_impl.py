"""The fused attention path (`attention_impl="auto"`, jax.nn.dot_product_attention) equals the
exact einsum path on left- and right-padded batches, with and without a KV cache, for both LMs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax.errors import ConfigError
from fairjax.models import gpt2, llama
from fairjax.models.common import init_cache

FAMILIES = {"gpt2": (gpt2, gpt2.GPT2LMHeadModel), "llama": (llama, llama.LlamaForCausalLM)}


def _batch(vocab):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, size=(3, 10)).astype(np.int32)
    mask = np.ones((3, 10), np.int32)
    mask[0, :4] = 0  # left padding
    mask[1, 7:] = 0  # right padding
    return jnp.asarray(ids), jnp.asarray(mask)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fused_equals_einsum_forward_and_grad(family):
    mod, cls = FAMILIES[family]
    cfg = mod.PRESETS["tiny"]
    params = mod.init_params(cfg, jax.random.PRNGKey(0))
    ids, mask = _batch(cfg.vocab_size)

    def loss(p, impl):
        out = cls(cfg.replace(attention_impl=impl)).apply({"params": p}, ids, mask)
        return jnp.sum(jnp.where(mask[..., None] > 0, out.logits, 0.0) ** 2) * 1e-3, out.logits

    (l_x, logits_x), g_x = jax.value_and_grad(loss, has_aux=True)(params, "xla")
    (l_a, logits_a), g_a = jax.value_and_grad(loss, has_aux=True)(params, "auto")
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(logits_a)[real], np.asarray(logits_x)[real], atol=2e-5)
    np.testing.assert_allclose(l_a, l_x, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_a), jax.tree.leaves(g_x)):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fused_cache_decoding_equals_einsum(family):
    mod, cls = FAMILIES[family]
    cfg = mod.PRESETS["tiny"]
    params = mod.init_params(cfg, jax.random.PRNGKey(1))
    ids, mask = _batch(cfg.vocab_size)
    outs = {}
    for impl in ("xla", "auto"):
        model = cls(cfg.replace(attention_impl=impl))
        cache = init_cache(cfg, 3, 12)
        full_mask = jnp.concatenate([mask, jnp.ones((3, 2), mask.dtype)], axis=1)
        pre = model.apply({"params": params}, ids, full_mask, cache=cache)
        nxt = jnp.argmax(pre.logits[:, -1], -1)[:, None]
        step = model.apply({"params": params}, nxt, full_mask, cache=pre.cache)
        outs[impl] = (pre.logits[:, -1], step.logits[:, -1])
    for a, b in zip(outs["auto"], outs["xla"]):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_unknown_impl_is_rejected():
    with pytest.raises(ConfigError, match="attention_impl"):
        gpt2.PRESETS["tiny"].replace(attention_impl="flash3")
