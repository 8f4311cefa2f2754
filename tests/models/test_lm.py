"""GPT-2 and LLaMA against the PyTorch fixtures, KV cache, padding, bf16, remat, dropout, sharding.

Every shape and tolerance is read from the fixture files.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax.io import hf
from fairjax.errors import CheckpointMismatchError
from fairjax.models import common

KINDS = ["gpt2_tiny", "llama_tiny"]


def model_class(config):
    return hf.model_module(config.kind).Model


@pytest.fixture(scope="module", params=KINDS)
def lm(request, fixtures_dir):
    """(config, params, reference npz, meta) of one fixture model."""
    root = fixtures_dir / request.param
    config, params = hf.load_hf_dir(root / "hf")
    ref = dict(np.load(root / "reference.npz"))
    meta = json.loads((root / "meta.json").read_text())
    return config, params, ref, meta


def left_pad(ids, mask):
    """Move each row's padding to the left: [B, T] -> [B, T]."""
    shift = ids.shape[1] - mask.sum(1)
    return (np.stack([np.roll(r, s) for r, s in zip(ids, shift)]),
            np.stack([np.roll(r, s) for r, s in zip(mask, shift)]))


def test_matches_pytorch_reference(lm):
    config, params, ref, meta = lm
    ids, mask = ref["input_ids"], ref["attention_mask"]
    pos = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)  # reference used arange (right pad)
    out, inter = common.forward_with_intermediates(model_class(config)(config), params, ids, mask, pos)
    got = {"logits": out.logits, "last_hidden_state": out.hidden_states, **inter}
    assert out.logits.dtype == jnp.float32 and out.cache is None
    for key in ("logits", "last_hidden_state", "embeddings", "block_outputs"):
        tol = meta["suggested_tolerances"][key]
        np.testing.assert_allclose(np.asarray(got[key]), ref[key], atol=tol["atol"], rtol=tol["rtol"],
                                   err_msg=key)
        assert np.abs(np.asarray(got[key]) - ref[key]).max() < 1e-4


def test_default_positions_and_left_padding(lm):
    """position_ids=None works for right padding and for left padding (real tokens only)."""
    config, params, ref, meta = lm
    model = model_class(config)(config)
    ids, mask = ref["input_ids"], ref["attention_mask"]
    tol = meta["suggested_tolerances"]["logits"]
    right = model.apply({"params": params}, ids, mask).logits
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(right)[real], ref["logits"][real], **tol)
    lids, lmask = left_pad(ids, mask)
    left = np.asarray(model.apply({"params": params}, lids, lmask).logits)
    np.testing.assert_allclose(left[lmask.astype(bool)], ref["logits"][real], **tol)


def test_kv_cache_decoding_equals_full_forward(lm):
    """Left-padded ragged batch: prefill, then one token at a time == full forward (< 1e-5)."""
    config, params, ref, _ = lm
    model = model_class(config)(config)
    lids, lmask = left_pad(ref["input_ids"], ref["attention_mask"])
    b, t = lids.shape
    extra = 3
    full = np.asarray(model.apply({"params": params}, lids, lmask).logits)
    cache_mask = np.concatenate([lmask, np.ones((b, extra), lmask.dtype)], axis=1)  # [B, S_max]
    step = jax.jit(lambda p, x, c: model.apply({"params": p}, x, cache_mask, cache=c))
    prefill = t // 2
    out = step(params, lids[:, :prefill], common.init_cache(config, b, t + extra))
    real = lmask[:, :prefill].astype(bool)
    errs = [np.abs(np.asarray(out.logits)[real] - full[:, :prefill][real]).max()]
    cache = out.cache
    for i in range(prefill, t):
        out = step(params, lids[:, i:i + 1], cache)
        cache = out.cache
        errs.append(np.abs(np.asarray(out.logits[:, 0]) - full[:, i]).max())
    assert int(cache.index) == t
    assert cache.k[0].shape == (b, config.num_kv_heads, t + extra, config.head_dim)  # head-major
    assert max(errs) < 1e-5, errs


def test_kv_cache_all_padding_prefill_chunk(lm):
    """A row of 11 real tokens in 24, prefill 12: its whole prefill chunk and its first decoded
    position are padding. Cached decoding must still equal the full forward at EVERY position
    (a query with no visible key used to average over the cache's unwritten slots)."""
    config, params, ref, _ = lm
    model = model_class(config)(config)
    ids = np.asarray(ref["input_ids"][:1]).repeat(2, 0)  # row 0 of the fixture: 24 real tokens
    t = ids.shape[1]
    assert t == 24 and ref["attention_mask"][0].all()
    mask = np.ones_like(ids)
    mask[1, :t - 11] = 0
    ids[1, :t - 11] = ids[1, 0]  # padding ids are arbitrary: the mask hides them
    full = np.asarray(model.apply({"params": params}, ids, mask).logits)
    extra, prefill = 2, 12
    cache_mask = np.concatenate([mask, np.ones((2, extra), mask.dtype)], axis=1)
    step = jax.jit(lambda p, x, c: model.apply({"params": p}, x, cache_mask, cache=c))
    out = step(params, ids[:, :prefill], common.init_cache(config, 2, t + extra))
    errs = [np.abs(np.asarray(out.logits) - full[:, :prefill]).max()]
    for i in range(prefill, t):
        out = step(params, ids[:, i:i + 1], out.cache)
        errs.append(np.abs(np.asarray(out.logits[:, 0]) - full[:, i]).max())
    assert max(errs) < 1e-5, errs
    # and the real tokens of the short row are independent of the padding in front of them
    alone = np.asarray(model.apply({"params": params}, ids[1:, t - 11:]).logits)
    np.testing.assert_allclose(full[1, t - 11:], alone[0], atol=1e-5)


def test_bfloat16_compute_close(lm):
    config, params, ref, _ = lm
    ids, mask = ref["input_ids"], ref["attention_mask"]
    out = model_class(config)(config.replace(dtype="bfloat16")).apply({"params": params}, ids, mask)
    assert out.logits.dtype == jnp.float32 and out.hidden_states.dtype == jnp.bfloat16
    real = mask.astype(bool)
    err = np.abs(np.asarray(out.logits)[real] - ref["logits"][real]).max()
    scale = np.abs(ref["logits"]).max()
    assert 0 < err < 0.05 * scale + 1e-2, (err, scale)


def _loss_and_grads(config, params, ids, mask):
    model = model_class(config)(config)

    def loss(p):
        logits = model.apply({"params": p}, ids, mask).logits
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, ids[..., None], -1)[..., 0])

    return jax.jit(jax.value_and_grad(loss))(params)


def test_remat_same_outputs_and_grads(lm):
    config, params, ref, _ = lm
    ids, mask = ref["input_ids"], ref["attention_mask"]
    base_loss, base_grads = _loss_and_grads(config, params, ids, mask)
    for remat in ("block", "dots"):
        loss, grads = _loss_and_grads(config.replace(remat=remat), params, ids, mask)
        np.testing.assert_allclose(loss, base_loss, rtol=1e-6)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5),
                               grads, base_grads)


def test_dropout_only_when_not_deterministic(lm):
    config, params, ref, _ = lm
    if config.kind == "llama":
        config = config.replace(attention_dropout=0.5)
    model = model_class(config)(config)
    ids, mask = ref["input_ids"], ref["attention_mask"]
    det = model.apply({"params": params}, ids, mask).logits
    rngs = {"dropout": jax.random.PRNGKey(0)}
    noisy = model.apply({"params": params}, ids, mask, deterministic=False, rngs=rngs).logits
    assert not np.allclose(det, noisy)
    again = model.apply({"params": params}, ids, mask, deterministic=False, rngs=rngs).logits
    np.testing.assert_array_equal(noisy, again)


def test_partition_rules_cover_every_param(lm):
    config, params, _, _ = lm
    rules = config.partition_rules()
    assert rules[-1][0] == ".*"
    specs = common.match_partition_rules(rules, params)
    assert jax.tree_util.tree_structure(specs) == jax.tree_util.tree_structure(params)
    # every parameter is matched by a specific rule, not just by the catch-all
    without_catch_all = common.match_partition_rules(rules[:-1], params)
    n_sharded = sum(any(a is not None for a in s) for s in jax.tree_util.tree_leaves(
        without_catch_all, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)))
    assert n_sharded >= 4 * config.num_layers  # attention + MLP kernels are sharded
    with pytest.raises(ValueError, match="no partition rule matches"):
        common.match_partition_rules([(r"^nothing$", jax.sharding.PartitionSpec())], params)


def test_random_init_matches_checkpoint_tree(lm):
    config, params, _, _ = lm
    init = hf.model_module(config.kind).init_params
    fresh = jax.eval_shape(lambda key: init(config, key), jax.random.PRNGKey(0))  # nothing computed
    assert common.flat_shapes(fresh) == common.flat_shapes(params)
    assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(fresh))


def test_checkpoint_mismatch_lists_keys_and_shapes(lm, fixtures_dir):
    config, _, _, _ = lm
    root = fixtures_dir / ("gpt2_tiny" if config.kind == "gpt2" else "llama_tiny") / "hf"
    sd = hf.read_hf_state_dict(root)
    keys = sorted(sd)
    dropped, reshaped = keys[0], keys[1]
    sd.pop(dropped)
    sd[reshaped] = np.zeros(sd[reshaped].shape + (2,), np.float32)
    sd["surprise.weight"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointMismatchError) as info:
        hf.model_module(config.kind).params_from_hf(sd, config)
    msg = str(info.value)
    assert dropped in msg and "surprise.weight" in msg and reshaped in msg
    assert info.value.missing == [dropped] and info.value.unexpected == ["surprise.weight"]
    assert reshaped in info.value.mismatched
