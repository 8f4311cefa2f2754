"""ILQL loss terms: closed-form values, upstream fixture arrays, padding, jit, gradients."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax.agents.ilql import hparams_from_upstream
from fairjax.losses import ilql as L

terms = jax.jit(L.ilql_terms, static_argnums=(7,))  # eager dispatch is slow on CPU


# ------------------------------------------------------------------ closed form (hand computed)
def _tiny():
    """B=1, T=4 tokens, S=3 states at positions 1,2,3, A=2 actions at 1,2 (emit tokens 2,3)."""
    batch = {
        "tokens": jnp.array([[0, 0, 1, 2]], jnp.int32),
        "attn_mask": jnp.ones((1, 4), jnp.float32),
        "state_idxs": jnp.array([[1, 2, 3]], jnp.int32),
        "action_idxs": jnp.array([[1, 2]], jnp.int32),
        "rewards": jnp.array([[0.0, 1.0]], jnp.float32),
        "terminals": jnp.array([[0, 0, 1]], jnp.int32),
    }
    vs_all = jnp.array([[0.5, 0.2, 9.0]])
    q1 = jnp.array([[[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]]])
    q2 = jnp.array([[[0.0, 0.5, 0.0], [0.0, 0.0, 1.0]]])
    tq1 = jnp.array([[0.7, 0.0]])  # already gathered at a_t
    tq2 = jnp.array([[0.6, 0.3]])
    logits = jnp.zeros((1, 4, 3))
    return vs_all, q1, q2, tq1, tq2, logits, batch


HP = L.ILQLHparams(gamma=0.5, tau=0.7, cql_temp=1.0, beta=2.0, exp_weights=True,
                   transition_weight=0.1, dm_margin=0.5, awac_weight=1.0, v_weight=1.0,
                   q_weight=1.0, cql_weight=0.25, dm_weight=0.5)


def test_closed_form_terms():
    t = terms(*_tiny(), HP)
    # Q targets: r0 + γ·V(s1) = 0.1 ; r1 + γ·0·V(s2) = 1 (terminal next state)
    q_loss = ((0.1 - 1) ** 2 + (1 - 2) ** 2) / 2 + ((0.1 - 0.5) ** 2 + 0.0) / 2
    assert float(t["q_loss"]) == pytest.approx(q_loss, rel=1e-6)
    # Q̂ = min(t1, t2) = [0.6, 0.0]; V = [0.5, 0.2]; diffs 0.1 (τ) and -0.2 (1-τ)
    assert float(t["v_loss"]) == pytest.approx((0.7 * 0.01 + 0.3 * 0.04) / 2, rel=1e-6)
    e = math.e
    cql = ((math.log(2 + e) - 1) + (math.log(2 + e ** 2) - 2)) / 2 \
        + ((math.log(2 + e ** 0.5) - 0.5) + (math.log(2 + e) - 1)) / 2
    assert float(t["cql_loss"]) == pytest.approx(cql, rel=1e-6)
    assert float(t["dm_loss"]) == pytest.approx(0.25 + 0.25, rel=1e-6)
    w = [0.1, math.exp(2 * 0.1), math.exp(2 * -0.2), 0.1]
    np.testing.assert_allclose(np.asarray(t["awac_weights"][0]), w, rtol=1e-6)
    awac = math.log(3) * (w[0] + w[1] + w[2]) / 3  # zero logits: CE = log 3; Z = 3 next tokens
    assert float(t["token_loss"]) == pytest.approx(awac, rel=1e-6)
    total = awac + 0.0095 + q_loss + 0.25 * cql + 0.5 * 0.5
    assert float(t["loss"]) == pytest.approx(total, rel=1e-6)
    assert float(t["n_valid"]) == 2
    assert float(t["q1_avg"]) == pytest.approx(1.5) and float(t["q1_var"]) == pytest.approx(0.25)
    assert float(t["advantage_min"]) == pytest.approx(-0.2, rel=1e-5)
    assert float(t["act_weight_avg"]) == pytest.approx((w[1] + w[2]) / 2, rel=1e-6)


def test_closed_form_options():
    vs_all, q1, q2, tq1, tq2, logits, batch = _tiny()
    # binary weights, clip, single Q, value clipping, MC returns
    hp = L.ILQLHparams(gamma=0.5, tau=0.7, beta=0.8, exp_weights=False, clip_weight=0.5,
                       transition_weight=0.0, double_q=False, value_max=0.65, mc_returns=True,
                       awac_weight=1.0)
    t = terms(vs_all, q1, None, tq1, None, logits, batch, hp)
    # single head: Q̂ = clip(tq1, max .65) = [.65, 0]; adv = [.15, -.2] -> w = [.8, .2] clipped to .5
    np.testing.assert_allclose(np.asarray(t["awac_weights"][0]), [0, 0.5, 0.2, 0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(t["target_qs"][0]), [0.65, 0.0], rtol=1e-6)
    assert float(t["q_loss"]) == pytest.approx(((0.1 - 1) ** 2 + 1) / 2, rel=1e-6)
    # MC returns G = [γ·1, 1] = [0.5, 1]; V = [0.5, 0.2] -> diffs 0 and 0.8 (τ)
    assert float(t["v_loss"]) == pytest.approx(0.7 * 0.64 / 2, rel=1e-6)
    assert "q2" not in t and "q2_avg" not in t
    np.testing.assert_allclose(np.asarray(L.downstream_returns(jnp.array([[1.0, 2.0, 3.0]]), 0.5)),
                               [[1 + 1 + 0.75, 2 + 1.5, 3]], rtol=1e-6)


def test_awac_zero_needs_no_policy():
    vs_all, q1, q2, tq1, tq2, _, batch = _tiny()
    hp = L.ILQLHparams(awac_weight=0.0)
    loss, m = L.ilql_loss(vs_all, q1, q2, tq1, tq2, None, batch, hp)
    assert np.isfinite(float(loss))
    # upstream logs CE of all-zero logits = log|V| times the weighted fraction
    assert float(m["token_loss"]) == pytest.approx(math.log(3) * 2 / 3, rel=1e-6)
    with pytest.raises(ValueError, match="policy_logits"):
        L.ilql_loss(vs_all, q1, q2, tq1, tq2, None, batch, L.ILQLHparams(awac_weight=1.0))


# ------------------------------------------------------------------ upstream fixture arrays
@pytest.fixture(scope="module")
def ref(fixtures_dir):
    d = fixtures_dir / "ilql_tiny"
    meta = json.loads((d / "meta.json").read_text())
    r = dict(np.load(d / "reference.npz"))
    batch = {k: jnp.asarray(v) for k, v in np.load(d / "batch.npz").items()}
    hp = hparams_from_upstream(meta["ilql"], meta["loss_weights"])
    return r, batch, hp, meta


def test_hparams_match_reference_scalars(ref):
    r, _, hp, _ = ref
    for name, val in (("hp_gamma", hp.gamma), ("hp_tau", hp.tau), ("hp_beta", hp.beta),
                      ("hp_cql_temp", hp.cql_temp), ("hp_transition_weight", hp.transition_weight),
                      ("w_awac", hp.awac_weight), ("w_v", hp.v_weight), ("w_q", hp.q_weight),
                      ("w_cql", hp.cql_weight), ("w_dm", hp.dm_weight)):
        assert float(r[name]) == pytest.approx(val), name


def _fixture_args(r):
    return (r["vs_all"], r["q1_all"], r["q2_all"], r["target_qs_all"], r["target_qs_all"],
            r["policy_logits"])


def test_losses_equal_upstream_from_arrays(ref):
    """Upstream's own head outputs through our loss functions give upstream's loss values."""
    r, batch, hp, meta = ref
    tol = meta["suggested_tolerances"]["losses"]
    t = terms(*_fixture_args(r), batch, hp)
    for ours, theirs in (("q_loss", "q_loss"), ("v_loss", "v_loss"), ("cql_loss", "cql_loss"),
                         ("dm_loss", "dm_loss"), ("token_loss", "awac_loss"), ("loss", "total_loss")):
        np.testing.assert_allclose(float(t[ours]), float(r[theirs]), err_msg=ours, **tol)
    assert int(t["n_valid"]) == int(r["n_valid"])
    np.testing.assert_array_equal(np.asarray(t["select_tokens"]), r["select_tokens"])
    step = meta["suggested_tolerances"]["per_step"]
    tol_s = {"rtol": step["rtol"], "atol": step["atol"]}
    for k in ("vs", "vns", "q1", "q2", "target_qs", "awac_weights"):
        np.testing.assert_allclose(np.asarray(t[k]), r[k], err_msg=k, **tol_s)
    # [B, A] pre-gathered targets give the same losses as full-vocabulary targets
    t2 = terms(r["vs_all"], r["q1_all"], r["q2_all"], r["target_qs"], r["target_qs"],
                      r["policy_logits"], batch, hp)
    np.testing.assert_allclose(float(t2["loss"]), float(t["loss"]), rtol=1e-6)


def _pad(r, batch, extra_s=3, extra_t=5, seed=0):
    """Append padded state/action slots (idx 0, reward 0, terminal 1) and pad tokens, filling the
    head outputs at the new slots with garbage."""
    rng = np.random.default_rng(seed)
    b = {k: np.asarray(v) for k, v in batch.items()}
    pad_id = int(b["tokens"][~b["attn_mask"].astype(bool)][0])
    B = b["tokens"].shape[0]
    nb = {
        "tokens": np.concatenate([b["tokens"], np.full((B, extra_t), pad_id, np.int32)], 1),
        "attn_mask": np.concatenate([b["attn_mask"], np.zeros((B, extra_t), np.float32)], 1),
        "state_idxs": np.concatenate([b["state_idxs"], np.zeros((B, extra_s), np.int32)], 1),
        "action_idxs": np.concatenate([b["action_idxs"], np.zeros((B, extra_s), np.int32)], 1),
        "rewards": np.concatenate([b["rewards"], np.zeros((B, extra_s), np.float32)], 1),
        "terminals": np.concatenate([b["terminals"], np.ones((B, extra_s), np.int32)], 1),
    }

    def ext(x, axis, n):
        shape = list(x.shape)
        shape[axis] = n
        return np.concatenate([x, 50 * rng.standard_normal(shape).astype(np.float32)], axis)

    args = [ext(r["vs_all"], 1, extra_s)] + [ext(r[k], 1, extra_s) for k in
                                             ("q1_all", "q2_all", "target_qs_all", "target_qs_all")]
    args.append(ext(r["policy_logits"], 1, extra_t))
    return args, {k: jnp.asarray(v) for k, v in nb.items()}


def test_padding_invariance(ref):
    r, batch, hp, _ = ref
    hp = L.ILQLHparams(**{**hp.__dict__, "dm_weight": 0.3, "transition_weight": 0.2, "beta": 0.5})
    base = terms(*_fixture_args(r), batch, hp)
    args, pbatch = _pad(r, batch)
    padded = terms(*args, pbatch, hp)
    for k in ("loss", "q_loss", "v_loss", "cql_loss", "dm_loss", "token_loss", "q1_avg", "v_var",
              "advantage_mean", "advantage_max", "advantage_min", "act_weight_avg", "n_valid"):
        np.testing.assert_allclose(float(padded[k]), float(base[k]), rtol=2e-6, err_msg=k)


def test_jit_equals_eager_and_gradients(ref):
    r, batch, hp, _ = ref
    hp = L.ILQLHparams(**{**hp.__dict__, "dm_weight": 0.1, "beta": 0.5})
    args, pbatch = _pad(r, batch)
    args = [jnp.asarray(a) for a in args]

    def f(vs, q1, q2, t1, t2, pl):
        return L.ilql_loss(vs, q1, q2, t1, t2, pl, pbatch, hp)[0]

    eager = f(*args)
    jitted = jax.jit(f)(*args)
    np.testing.assert_allclose(float(jitted), float(eager), rtol=1e-6)
    grads = jax.jit(jax.grad(f, argnums=tuple(range(6))))(*args)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
    g_vs, g_q1, g_q2, g_t1, g_t2, g_pl = (np.asarray(g) for g in grads)
    valid = 1 - np.asarray(pbatch["terminals"])[:, :-1]  # [B, A]
    # stop-gradient targets: target Q gets nothing
    assert not g_t1.any() and not g_t2.any()
    # masked action slots: no gradient into Q; V only at non-terminal states (the terminal /
    # padded V(s') is a detached bootstrap)
    assert not g_q1[valid == 0].any() and not g_q2[valid == 0].any()
    assert g_q1[valid == 1].any()
    assert not g_vs[:, 1:][np.asarray(pbatch["terminals"])[:, 1:] == 1].any()
    # pad positions of the policy get nothing (their next token is padding)
    nxt = np.asarray(pbatch["attn_mask"])[:, 1:]
    assert not g_pl[:, :-1][nxt == 0].any() and not g_pl[:, -1].any()


def test_v_target_is_detached_in_q_loss():
    vs_all, q1, q2, tq1, tq2, logits, batch = _tiny()
    g = jax.grad(lambda v: L.ilql_terms(v, q1, q2, tq1, tq2, logits, batch, HP)["q_loss"])(vs_all)
    assert not np.asarray(g).any()
    g = jax.grad(lambda v: L.ilql_terms(v, q1, q2, tq1, tq2, logits, batch, HP)["v_loss"])(vs_all)
    # dV_loss/dV_0 = -2·τ·0.1/N, dV_1 = -2·(1-τ)·(-0.2)/N, terminal state 0
    np.testing.assert_allclose(np.asarray(g[0]), [-0.07, 0.06, 0.0], rtol=1e-5, atol=1e-7)
