"""PHF objectives (MLE, unlikelihood, AWR, RWR) on hand-computable inputs."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax.losses.phf import PHFHParams, awr_loss, phf_loss, unlikelihood_loss, unlikelihood_weights

# B = 1, T = 4: three predicted tokens.
LP = np.array([[math.log(0.5), math.log(0.25), math.log(0.8)]], np.float32)
SCORES = np.array([[9.0, 0.0, 0.6, 0.2]], np.float32)  # score of the predicted token = [0, .6, .2]
VALUES = np.array([[-0.5, -0.1, -0.3, 7.0]], np.float32)  # value at predicting position = [-.5,-.1,-.3]
MASK = np.ones((1, 3), np.float32)


def test_mle():
    loss, _ = phf_loss(jnp.asarray(LP), jnp.asarray(MASK), PHFHParams("mle"))
    np.testing.assert_allclose(float(loss), -(math.log(0.5) + math.log(0.25) + math.log(0.8)) / 3,
                               rtol=1e-6)


def test_unlikelihood_hard_and_soft():
    # hard, thr = 0.3: a = [1, 0, 1]
    want = (-math.log(0.5) - 2.0 * math.log(0.75) - math.log(0.8)) / 3
    got, m = unlikelihood_loss(jnp.asarray(LP), jnp.asarray(SCORES), jnp.asarray(MASK),
                               alpha=2.0, threshold=0.3)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    np.testing.assert_allclose(float(m["aligned_frac"]), 2 / 3, rtol=1e-6)
    # upstream quirk: threshold 0 -> soft weights a = 1 − s = [1, .4, .8]
    a = np.array([1.0, 0.4, 0.8])
    p = np.array([0.5, 0.25, 0.8])
    soft = np.mean(-a * np.log(p) - 1.0 * (1 - a) * np.log(1 - p))
    got0, _ = unlikelihood_loss(jnp.asarray(LP), jnp.asarray(SCORES), jnp.asarray(MASK),
                                alpha=1.0, threshold=0.0)
    np.testing.assert_allclose(float(got0), soft, rtol=1e-5)
    # explicit option overrides the quirk: threshold 0 with hard weights -> a = 1[s <= 0] = [1, 0, 0]
    w = unlikelihood_weights(jnp.asarray(SCORES[:, 1:]), 0.0, soft=False)
    np.testing.assert_array_equal(np.asarray(w), [[1.0, 0.0, 0.0]])
    hp = PHFHParams("unlikelihood", ul_alpha=1.0, ul_threshold=0.0, ul_soft_weights=False)
    got_h, _ = phf_loss(jnp.asarray(LP), jnp.asarray(MASK), hp, token_scores=jnp.asarray(SCORES))
    want_h = (-math.log(0.5) - math.log(0.75) - math.log(0.2)) / 3
    np.testing.assert_allclose(float(got_h), want_h, rtol=1e-5)


def test_unlikelihood_p_one_is_finite():
    lp = jnp.zeros((1, 3))  # p = 1 -> log(max(0, 1e-20))
    got, _ = unlikelihood_loss(lp, jnp.asarray(SCORES), jnp.asarray(MASK), 1.0, 0.3)
    np.testing.assert_allclose(float(got), -math.log(1e-20) / 3, rtol=1e-4)


def test_awr_closed_form():
    beta, alpha = 2.0, 0.25
    r = np.array([0.0, -0.6, -0.2])
    v = np.array([-0.5, -0.1, -0.3])
    w = np.exp((r - v) / beta)
    ce = -LP[0]
    want = alpha * np.mean(w * ce) + (1 - alpha) * np.mean((r - v) ** 2)
    hp = PHFHParams("awr", awr_alpha=alpha, awr_beta=beta)
    got, m = phf_loss(jnp.asarray(LP), jnp.asarray(MASK), hp, jnp.asarray(SCORES), jnp.asarray(VALUES))
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    np.testing.assert_allclose(float(m["weight_mean"]), w.mean(), rtol=1e-5)
    # gradient wrt the values: only the value loss (advantage is stop-gradient): −2(1−α)(r − v)/3
    g = jax.grad(lambda vals: awr_loss(jnp.asarray(LP), jnp.asarray(SCORES), vals, jnp.asarray(MASK),
                                       hp)[0])(jnp.asarray(VALUES))
    np.testing.assert_allclose(np.asarray(g)[0, :3], -2 * (1 - alpha) * (r - v) / 3, rtol=1e-5)
    assert float(g[0, 3]) == 0.0  # the last position predicts nothing


def test_rwr_and_clamp():
    hp = PHFHParams("rwr", awr_alpha=0.5, awr_beta=10.0)  # rwr forces α = 1
    v0 = jnp.full((1, 4), -0.5)
    got, _ = phf_loss(jnp.asarray(LP), jnp.asarray(MASK), hp, jnp.asarray(SCORES), v0)
    r = np.array([0.0, -0.6, -0.2])
    np.testing.assert_allclose(float(got), np.mean(np.exp((r + 0.5) / 10.0) * -LP[0]), rtol=1e-5)
    g = jax.grad(lambda v: phf_loss(jnp.asarray(LP), jnp.asarray(MASK), hp, jnp.asarray(SCORES), v)[0])(v0)
    assert not np.any(np.asarray(g))  # the RWR value head gets no gradient (upstream behaviour)
    # weights are capped at clip_weight_max
    hp2 = PHFHParams("awr", awr_beta=1e-3, clip_weight_max=1000.0, use_value_head=False)
    scores = jnp.asarray([[0.0, -1.0, -1.0, -1.0]])  # r = +1 -> exp(1000) capped
    _, m = phf_loss(jnp.asarray(LP), jnp.asarray(MASK), hp2, scores, None)
    np.testing.assert_allclose(float(m["weight_max"]), 1000.0)
    hp3 = PHFHParams("awr", fixed_value=-0.2, awr_alpha=1.0)
    _, m3 = phf_loss(jnp.asarray(LP), jnp.asarray(MASK), hp3, jnp.asarray(SCORES), None)
    np.testing.assert_allclose(float(m3["advantage_mean"]), np.mean(r + 0.2), rtol=1e-5)


@pytest.mark.parametrize("objective", ["mle", "unlikelihood", "awr", "rwr"])
def test_generic_properties(objective):
    hp = PHFHParams(objective, ul_threshold=0.3, normalize_advantage=objective == "awr")
    rng = np.random.default_rng(0)
    lp = jnp.asarray(np.log(rng.uniform(0.05, 0.95, (2, 5))), jnp.float32)
    scores = jnp.asarray(rng.uniform(0, 1, (2, 6)), jnp.float32)
    values = jnp.asarray(-rng.uniform(0, 1, (2, 6)), jnp.float32)
    mask = jnp.asarray([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], jnp.float32)

    def f(lp, values, scores, mask):
        return phf_loss(lp, mask, hp, scores, values)[0]

    eager = f(lp, values, scores, mask)
    np.testing.assert_allclose(float(eager), float(jax.jit(f)(lp, values, scores, mask)), rtol=1e-6)
    g_lp, g_s = jax.grad(f, argnums=(0, 2))(lp, values, scores, mask)
    assert np.all(np.isfinite(np.asarray(g_lp))) and np.any(np.asarray(g_lp))
    assert not np.any(np.asarray(g_lp)[1, 3:])  # masked
    assert not np.any(np.asarray(g_s))  # scores are data
    # padding invariance: extra masked columns
    pad = lambda x, v, n=3: jnp.concatenate([x, jnp.full((2, n), v, x.dtype)], axis=1)
    padded = f(pad(lp, -30.0), pad(values, 5.0), pad(scores, 9.0), pad(mask, 0.0))
    np.testing.assert_allclose(float(padded), float(eager), rtol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="objective"):
        PHFHParams("ppo")
    with pytest.raises(ValueError, match="token_scores"):
        phf_loss(jnp.asarray(LP), jnp.asarray(MASK), PHFHParams("awr"))
    with pytest.raises(ValueError, match="values"):
        phf_loss(jnp.asarray(LP), jnp.asarray(MASK), PHFHParams("awr"), jnp.asarray(SCORES))
