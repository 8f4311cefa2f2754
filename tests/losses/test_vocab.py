"""Memory-lean vocabulary heads (fairjax/losses/vocab.py): chunked log-sum-exp / DM hinge / LM-head
CE equal the dense [.., V] path in value and gradient (< 1e-5 relative), for ILQL (double Q, DM,
AWAC through a separate and a shared policy), BC, and the A-LoL/DPO/PHF log-prob forward; and the
compiled ILQL step keeps no [B, A, V] float32 temporary."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax.agents import alol as AL
from fairjax.agents import ilql as I
from fairjax.agents import lm as LM
from fairjax.losses import vocab as V
from fairjax.losses.ilql import ILQLHparams
from fairjax.models import gpt2, llama

RTOL = 1e-5


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def _tree_rel(ga, gb):
    return max(_rel(x, y) for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)))


@pytest.mark.parametrize("w_axis,chunk", [(1, 16), (0, 40), (1, 1000)])
def test_lse_hinge_columns_equal_dense(w_axis, chunk):
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    K, Vs = 12, 103  # 103 = 6 full blocks of 16 + a remainder of 7
    x = jax.random.normal(k[0], (2, 3, K))
    w = jax.random.normal(k[1], (K, Vs))
    b = jax.random.normal(k[2], (Vs,))
    tok = jax.random.randint(k[3], (2, 3), 0, Vs)
    wl = w if w_axis == 1 else w.T

    def f(s):
        return jnp.sum(1.3 * s.lse) + jnp.sum(0.4 * s.taken) + jnp.sum(0.2 * s.hinge)

    dense = lambda x, w, b: f(V.dense_scores(x @ w + b, tok, temp=0.7, margin=0.3))  # noqa: E731
    lean = lambda x, w, b: f(V.linear_scores(x, w, b, tok, temp=0.7, margin=0.3, w_axis=w_axis,  # noqa: E731
                                             chunk=chunk))
    assert _rel(jax.jit(lean)(x, wl, b), dense(x, w, b)) < RTOL
    gd = jax.grad(dense, argnums=(0, 1, 2))(x, w, b)
    gl = jax.jit(jax.grad(lean, argnums=(0, 1, 2)))(x, wl, b)
    assert _rel(gl[0], gd[0]) < RTOL
    assert _rel(gl[1] if w_axis == 1 else gl[1].T, gd[1]) < RTOL
    assert _rel(gl[2], gd[2]) < RTOL


def _ilql_setup(separate_policy=True, awac=1.0, dm=0.5, vocab=301):
    mcfg = gpt2.GPT2Config(vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=4,
                           max_positions=64, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
    model = gpt2.GPT2LMHeadModel(mcfg)
    hp = ILQLHparams(awac_weight=awac, dm_weight=dm, dm_margin=0.1, cql_temp=0.8, beta=1.0)
    cfg = I.ILQLConfig(hparams=hp, separate_policy=separate_policy, separate_target=True)
    base = gpt2.init_params(mcfg, jax.random.PRNGKey(1))
    params, frozen = I.init_from_hf(cfg, base, jax.random.PRNGKey(2), mcfg.hidden_size, vocab)
    B, T, S = 2, 12, 5
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, (B, T)).astype(np.int32)
    batch = dict(tokens=tokens, attn_mask=np.ones((B, T), np.int32),
                 state_idxs=np.tile(np.arange(5, 5 + S), (B, 1)).astype(np.int32),
                 action_idxs=np.tile(np.arange(5, 4 + S), (B, 1)).astype(np.int32),
                 rewards=rng.normal(size=(B, S - 1)).astype(np.float32),
                 terminals=np.array([[0, 0, 0, 0, 1], [0, 0, 1, 1, 1]], np.int32))
    return model, cfg, params, frozen, {k: jnp.asarray(v) for k, v in batch.items()}


@pytest.mark.parametrize("separate_policy", [True, False])
def test_ilql_chunked_loss_and_grads_equal_dense(separate_policy):
    model, cfg, params, frozen, batch = _ilql_setup(separate_policy)

    def loss(c):
        return jax.jit(jax.value_and_grad(
            lambda p: I.loss_fn(model, c, p, frozen, batch), has_aux=True))(params)

    (ld, md), gd = loss(dataclasses.replace(cfg, vocab_chunk=0))
    (ll, ml), gl = loss(dataclasses.replace(cfg, vocab_chunk=64))  # 301 = 4 blocks + 45
    for k in ("loss", "q_loss", "v_loss", "cql_loss", "dm_loss", "token_loss"):
        assert _rel(ml[k], md[k]) < RTOL, k
    assert float(md["dm_loss"]) > 0 and float(md["token_loss"]) > 0
    assert _tree_rel(gl, gd) < RTOL


def test_bc_and_logprob_forward_chunked_equal_dense():
    lcfg = llama.PRESETS["tiny"] if hasattr(llama, "PRESETS") and "tiny" in llama.PRESETS else None
    for mcfg, mod in ((gpt2.GPT2Config(vocab_size=257, hidden_size=32, num_layers=1, num_heads=4,
                                       max_positions=32), gpt2),
                      (lcfg.replace(tie_word_embeddings=False) if lcfg else None, llama)):
        if mcfg is None:
            continue
        model = mod.Model(mcfg)
        params = mod.init_params(mcfg, jax.random.PRNGKey(0))
        _, _, _, _, batch = _ilql_setup(vocab=mcfg.vocab_size)
        f = lambda c: jax.jit(jax.value_and_grad(  # noqa: E731
            lambda p: LM.loss_fn(model, c, p, batch)[0]))(params)
        (vd, gd), (vl, gl) = f(LM.LMConfig(vocab_chunk=0)), f(LM.LMConfig(vocab_chunk=50))
        assert _rel(vl, vd) < RTOL and _tree_rel(gl, gd) < RTOL
        lp = lambda p, c: jnp.sum(AL.lm_forward(model, p, batch["tokens"], batch["attn_mask"],  # noqa: E731
                                                vocab_chunk=c)[0] * jnp.arange(11.0))
        gd2 = jax.grad(lp)(params, 0)
        gl2 = jax.jit(jax.grad(lp), static_argnums=1)(params, 50)
        assert _tree_rel(gl2, gd2) < RTOL


def test_compiled_ilql_step_has_no_vocab_sized_float32_temporary():
    """The chunked path's temporaries stay below one [B, A, V] float32 array while the dense path
    needs several (memory analysis of the compiled value-and-grad)."""
    from fairjax.benchmarks.train import synthetic_batch

    model, cfg, params, frozen, _ = _ilql_setup(vocab=20000)
    batch = {k: jnp.asarray(v) for k, v in synthetic_batch(8, 128, 20000).items()}
    bav = 8 * 63 * 20000 * 4  # B * A * V * 4 bytes

    def temps(c):
        f = jax.jit(jax.grad(lambda p: I.loss_fn(model, c, p, frozen, batch)[0]))
        return f.lower(params).compile().memory_analysis().temp_size_in_bytes

    dense, lean = temps(dataclasses.replace(cfg, vocab_chunk=0)), temps(
        dataclasses.replace(cfg, vocab_chunk=1024))
    # Dense keeps several [B, A, V] (Q scores, softmax) and [B, T, V] (logits) arrays; the chunked
    # path keeps [B*A, chunk] blocks (and the kernel gradients both paths need).
    assert dense - lean > 4 * bav and lean < 2 * bav, (dense, lean)


def test_chunked_heads_trace_no_vocab_sized_array():
    """vocab_chunk > 0 must reach the loss: no [.., V]-shaped value anywhere in the traced
    value-and-grad of BC and of the log-prob forward (A-LoL/DPO/PHF); the dense path has them."""
    from trainer_fixtures import jaxpr_eqns

    mcfg = gpt2.GPT2Config(vocab_size=257, hidden_size=32, num_layers=1, num_heads=4,
                           max_positions=32)
    model, params = gpt2.Model(mcfg), gpt2.init_params(mcfg, jax.random.PRNGKey(0))
    _, _, _, _, batch = _ilql_setup(vocab=mcfg.vocab_size)
    B, T = batch["tokens"].shape

    def vocab_sized(fn):
        jaxpr = jax.make_jaxpr(jax.value_and_grad(fn))(params)
        return [v.aval.shape for e in jaxpr_eqns(jaxpr) for v in e.outvars
                if v.aval.shape[:1] in ((B,), (B * (T - 1),)) and mcfg.vocab_size in v.aval.shape]

    def bc(c):
        return lambda p: LM.loss_fn(model, LM.LMConfig(vocab_chunk=c), p, batch)[0]

    def logp(c):
        return lambda p: jnp.sum(AL.lm_forward(model, p, batch["tokens"], batch["attn_mask"],
                                               vocab_chunk=c)[0])

    for make in (bc, logp):
        assert vocab_sized(make(0)), make.__name__  # the dense path materialises [B, T, V]
        assert vocab_sized(make(50)) == [], make.__name__


def test_ilql_detach_v_and_detach_q_stop_the_trunk_gradient():
    """detach_v / detach_q: the V (Q) heads read the value trunk's hidden states through a
    stop_gradient; with both set (and a separate policy) the trunk gets no gradient at all."""
    model, cfg, params, frozen, batch = _ilql_setup(separate_policy=True, awac=0.0, dm=0.0)
    trunk = [k for k in params if k not in ("policy",) and "head" not in k and k != "heads"]

    def trunk_grad(**kw):
        c = dataclasses.replace(cfg, **kw)
        g = jax.grad(lambda p: I.loss_fn(model, c, p, frozen, batch)[0])(params)
        return max(float(jnp.abs(x).max()) for k in trunk for x in jax.tree.leaves(g[k]))

    assert trunk, sorted(params)
    assert trunk_grad() > 0
    assert trunk_grad(detach_v=True) > 0 and trunk_grad(detach_q=True) > 0
    assert trunk_grad(detach_v=True, detach_q=True) == 0.0
