"""A-LoL family losses on hand-computable inputs, clamp/gradient semantics, padding, jit."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax.losses import alol
from fairjax.losses.alol import ALGORITHMS, ALoLHParams, alol_loss

# Two examples, three response slots; the last slot of row 1 is padding.
LP = np.array([[-1.0, -2.0, -3.0], [-0.3, -0.7, -9.0]], np.float32)
MASK = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
# Row 0: log π − log π_ref = ln 3 over the response -> ρ = 3; row 1: ln 0.5 -> ρ = 0.5.
REF = np.array([[-1.0, -2.0, -3.0 - math.log(3.0)], [-0.3 - math.log(0.5), -0.7, -1.0]], np.float32)
R = np.array([0.5, 2.0], np.float32)
V = np.array([0.2, 2.5], np.float32)  # A = [0.3, -0.5]
NLL = np.array([6.0, 1.0])


def _loss(alg, lp=LP, ref=REF, mask=MASK, **kw):
    return alol_loss(jnp.asarray(lp), jnp.asarray(ref), jnp.asarray(mask), jnp.asarray(R),
                     jnp.asarray(V), ALoLHParams(algorithm=alg, **kw))


def test_closed_forms():
    A = R - V
    Ap = np.maximum(A, 0)
    rho = np.array([1.9, 0.5])  # ρ = [3, 0.5] clamped to [0.1, 1.9]
    p = np.exp(LP)
    gold = np.maximum(p, 0.1) * MASK
    expected = {
        "nll": NLL.mean(),
        "wbc": (R * NLL).mean(),
        "r_gold": (R * (gold * -LP).sum(-1)).mean(),
        "r_lol": (R * rho * NLL).mean(),
        "a_lol": (Ap * rho * NLL).mean(),
        "a_lol_ref_free": (A * NLL).mean(),
        "a_lol_kl": (Ap * NLL).mean(),  # kl_beta = 0
    }
    # per-token ratios: row 0 -> [1, 1, 3 -> 1.9]; row 1 -> [0.5, 1, masked]
    rho_t = np.array([[1.0, 1.0, 1.9], [0.5, 1.0, 0.0]])
    expected["a_lol_seq"] = (Ap * (rho_t * -LP).sum(-1)).mean()
    assert set(expected) == set(ALGORITHMS)
    for alg, want in expected.items():
        got, _ = _loss(alg)
        np.testing.assert_allclose(float(got), want, rtol=1e-5, err_msg=alg)
    # the GOLD floor u = 0.1 is active at log p = -3 (p ≈ 0.0498)
    assert gold[0, 2] == pytest.approx(0.1)
    # by hand, a_lol: only row 0 has A > 0: 0.3 * 1.9 * 6 / 2
    np.testing.assert_allclose(float(_loss("a_lol")[0]), 0.3 * 1.9 * 6.0 / 2, rtol=1e-6)


def test_clip_none_and_zero():
    got, m = _loss("r_lol", ppo_clip=None)
    np.testing.assert_allclose(float(got), (R * np.array([3.0, 0.5]) * NLL).mean(), rtol=1e-5)
    np.testing.assert_allclose(float(m["ratio_raw_mean"]), 1.75, rtol=1e-5)
    got0, m0 = _loss("r_lol", ppo_clip=0.0)  # clamp(., 1, 1) = 1 -> wbc
    np.testing.assert_allclose(float(got0), (R * NLL).mean(), rtol=1e-5)
    assert float(m0["ratio_clip_frac"]) == 1.0
    _, m9 = _loss("a_lol")
    assert float(m9["ratio_clip_frac"]) == 0.5


def test_kl_variants():
    beta = 0.25
    kl = (-REF * MASK).sum(-1) - NLL  # NLL_ref − NLL_π = ln ρ
    np.testing.assert_allclose(kl, [math.log(3.0), math.log(0.5)], rtol=1e-5)
    Ap = np.maximum(R - V, 0)
    want = (Ap * NLL + beta * kl).mean()
    for alg in ("a_lol_kl", "a_lol"):  # a_lol + kl_beta = upstream HH KL mode (ratio ≡ 1)
        np.testing.assert_allclose(float(_loss(alg, kl_beta=beta)[0]), want, rtol=1e-5)
    np.testing.assert_allclose(float(_loss("r_lol", kl_beta=beta)[0]),
                               (R * NLL + beta * kl).mean(), rtol=1e-5)
    # gradient wrt the policy log-probs is −(A⁺ − β)·m / B (the KL term is −β∇NLL_π)
    g = jax.grad(lambda lp: _loss("a_lol_kl", lp=lp, kl_beta=beta)[0])(jnp.asarray(LP))
    np.testing.assert_allclose(np.asarray(g), -(Ap - beta)[:, None] * MASK / 2, rtol=1e-5)


def test_ref_free_clamp_option():
    A = R - V
    got, _ = _loss("a_lol_ref_free", clamp_ref_free_advantage=True)
    np.testing.assert_allclose(float(got), (np.maximum(A, 0) * NLL).mean(), rtol=1e-5)


def test_precomputed_advantage_and_sigmoid_rewards():
    adv = jnp.asarray([1.0, 0.5])
    got, _ = alol_loss(jnp.asarray(LP), None, jnp.asarray(MASK), jnp.asarray(R), None,
                       ALoLHParams(algorithm="a_lol_ref_free"), advantages=adv)
    np.testing.assert_allclose(float(got), (np.array([1.0, 0.5]) * NLL).mean(), rtol=1e-6)
    got, _ = _loss("wbc", reward_transform="sigmoid")
    np.testing.assert_allclose(float(got), (1 / (1 + np.exp(-R)) * NLL).mean(), rtol=1e-6)


@pytest.mark.parametrize("alg", ["a_lol", "r_lol"])
def test_detached_clamp_gradient(alg):
    """∂L/∂log π_t = −w·clip(ρ)·m_t / B: the ratio is a constant weight (no PPO min, no ∂ρ)."""
    w = np.maximum(R - V, 0) if alg == "a_lol" else R
    for clip, rho in ((0.9, [1.9, 0.5]), (0.2, [1.2, 0.8]), (None, [3.0, 0.5])):
        g = jax.grad(lambda lp: _loss(alg, lp=lp, ppo_clip=clip)[0])(jnp.asarray(LP))
        want = -(w * np.asarray(rho))[:, None] * MASK / 2
        np.testing.assert_allclose(np.asarray(g), want, rtol=1e-5, atol=1e-7)


def test_token_ratio_gradient():
    g = jax.grad(lambda lp: _loss("a_lol_seq", lp=lp)[0])(jnp.asarray(LP))
    rho_t = np.array([[1.0, 1.0, 1.9], [0.5, 1.0, 0.0]])
    Ap = np.maximum(R - V, 0)
    np.testing.assert_allclose(np.asarray(g), -Ap[:, None] * rho_t / 2, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_generic_properties(alg):
    hp = ALoLHParams(algorithm=alg, kl_beta=0.1 if alg == "a_lol_kl" else 0.0)

    def f(lp, ref, rewards, values, mask):
        return alol_loss(lp, ref, mask, rewards, values, hp)[0]

    args = tuple(jnp.asarray(x) for x in (LP, REF, R, V, MASK))
    eager = f(*args)
    jitted = jax.jit(f)(*args)
    np.testing.assert_allclose(float(eager), float(jitted), rtol=1e-6)
    g_lp, g_ref, g_r, g_v = jax.grad(f, argnums=(0, 1, 2, 3))(*args)
    for g in (g_lp, g_ref, g_r, g_v):
        assert np.all(np.isfinite(np.asarray(g)))
    # no gradient into the reference model, the rewards or the value estimate (all constants)
    for g in (g_ref, g_r, g_v):
        assert not np.any(np.asarray(g))
    assert float(g_lp[1, 2]) == 0.0  # masked position
    assert np.any(np.asarray(g_lp))
    # padding invariance: extra masked columns with arbitrary values change nothing
    pad = lambda x, v: jnp.concatenate([x, jnp.full((2, 4), v, x.dtype)], axis=1)
    padded = f(pad(args[0], -50.0), pad(args[1], 7.0), args[2], args[3], pad(args[4], 0.0))
    np.testing.assert_allclose(float(padded), float(eager), rtol=1e-6)


def test_bad_hparams_and_inputs():
    with pytest.raises(ValueError, match="algorithm"):
        ALoLHParams(algorithm="ppo")
    with pytest.raises(ValueError, match="kl_beta"):
        ALoLHParams(algorithm="wbc", kl_beta=0.1)
    with pytest.raises(ValueError, match="ppo_clip"):
        ALoLHParams(ppo_clip=1.5)
    with pytest.raises(ValueError, match="ref_logprobs"):
        alol_loss(jnp.asarray(LP), None, jnp.asarray(MASK), jnp.asarray(R), jnp.asarray(V),
                  ALoLHParams(algorithm="a_lol"))
    with pytest.raises(ValueError, match="values"):
        alol_loss(jnp.asarray(LP), jnp.asarray(REF), jnp.asarray(MASK), jnp.asarray(R), None,
                  ALoLHParams(algorithm="a_lol"))


def test_ratio_helpers_detached():
    rho, raw = alol.sequence_ratio(jnp.asarray(LP), jnp.asarray(REF), jnp.asarray(MASK), 0.9)
    np.testing.assert_allclose(np.asarray(raw), [3.0, 0.5], rtol=1e-5)
    g = jax.grad(lambda lp: alol.sequence_ratio(lp, jnp.asarray(REF), jnp.asarray(MASK), None)[0]
                 .sum())(jnp.asarray(LP))
    assert not np.any(np.asarray(g))


def test_kl_zero_needs_no_reference():
    hp = ALoLHParams(algorithm="a_lol_kl", kl_beta=0.0)
    assert not hp.needs_reference and ALoLHParams("a_lol_kl", kl_beta=0.1).needs_reference
    got, _ = alol_loss(jnp.asarray(LP), None, jnp.asarray(MASK), jnp.asarray(R), jnp.asarray(V), hp)
    np.testing.assert_allclose(float(got), (np.maximum(R - V, 0) * NLL).mean(), rtol=1e-5)
