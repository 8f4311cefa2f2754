"""PPO pieces: per-token KL-in-reward layout, GAE == a plain numpy backward recursion, whitening,
and the clipped policy/value loss on a hand-computed case."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax.losses.ppo import PPOHParams, gae, ppo_loss, token_rewards, whiten


def _numpy_gae(r, v, lengths, gamma, lam):
    n, t = r.shape
    adv = np.zeros((n, t))
    for i in range(n):
        last = 0.0
        for k in reversed(range(lengths[i])):
            v_next = v[i, k + 1] if k + 1 < lengths[i] else 0.0
            delta = r[i, k] + gamma * v_next - v[i, k]
            last = delta + gamma * lam * last
            adv[i, k] = last
    ret = adv + np.where(np.arange(t)[None] < lengths[:, None], v, 0.0)
    return adv, ret


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0)])
def test_gae_equals_numpy_recursion(gamma, lam):
    rng = np.random.default_rng(0)
    n, t = 5, 7
    r = rng.normal(size=(n, t)).astype(np.float32)
    v = rng.normal(size=(n, t)).astype(np.float32)
    lengths = np.array([7, 1, 4, 3, 6])
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
    adv, ret = gae(r, v, mask, gamma, lam)
    want_a, want_r = _numpy_gae(r, v, lengths, gamma, lam)
    np.testing.assert_allclose(np.asarray(adv), want_a * mask, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ret), want_r * mask, rtol=1e-5, atol=1e-5)
    if lam == 1.0 and gamma == 1.0:  # Monte-Carlo: R_t = Σ_{k≥t} r_k
        mc = np.flip(np.cumsum(np.flip(r * mask, 1), 1), 1) * mask
        np.testing.assert_allclose(np.asarray(ret), mc, rtol=1e-5, atol=1e-5)


def test_token_rewards_put_score_on_last_real_token():
    old = np.array([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]], np.float32)
    ref = np.array([[-1.5, -2.0, -1.0], [-2.0, -1.0, -1.0]], np.float32)
    mask = np.array([[1, 1, 0], [1, 1, 1]], np.float32)
    r = np.asarray(token_rewards(np.array([10.0, -1.0]), old, ref, mask, beta=0.5))
    np.testing.assert_allclose(r, [[-0.25, 10.0, 0.0], [-0.5, 0.0, -1.0]], atol=1e-6)


def test_whiten_masked_stats():
    x = np.array([[1.0, 3.0, 100.0]], np.float32)
    m = np.array([[1, 1, 0]], np.float32)
    np.testing.assert_allclose(np.asarray(whiten(x, m)), [[-1.0, 1.0, 0.0]], atol=1e-4)


def test_ppo_loss_hand_computed_and_on_policy():
    logps = np.array([[np.log(1.5), 0.0]], np.float32)
    old = np.zeros((1, 2), np.float32)
    adv = np.array([[1.0, -1.0]], np.float32)
    v = np.array([[1.0, 0.0]], np.float32)
    v_old = np.array([[0.0, 0.0]], np.float32)
    ret = np.array([[0.5, 2.0]], np.float32)
    mask = np.ones((1, 2), np.float32)
    loss, m = ppo_loss(logps, old, v, v_old, adv, ret, mask, epsilon=0.2, value_clip=0.2,
                       vf_coef=0.1)
    pg = (-1.2 + 1.0) / 2  # token 0: ρ=1.5 clipped to 1.2 (A>0); token 1: ρ=1, A=−1
    # token 0: max((1−0.5)², (0.2−0.5)²) = 0.25; token 1: max(4, 4) = 4
    vf = 0.5 * (0.25 + 4.0) / 2
    np.testing.assert_allclose(float(m["policy_loss"]), pg, rtol=1e-6)
    np.testing.assert_allclose(float(m["value_loss"]), vf, rtol=1e-6)
    np.testing.assert_allclose(float(loss), pg + 0.1 * vf, rtol=1e-5)
    assert float(m["clip_ratio/high"]) == 0.5
    # on-policy: ratio 1, no clipping; gradient wrt logps = −A/Σm
    g = jax.grad(lambda lp: ppo_loss(lp, lp, v, v, adv, ret, mask)[0])(jnp.asarray(logps))
    np.testing.assert_allclose(np.asarray(g), -adv / 2, rtol=1e-6)


def test_hparams_validation():
    with pytest.raises(ValueError, match="gamma"):
        PPOHParams(gamma=1.5)
    with pytest.raises(ValueError, match="beta"):
        PPOHParams(beta=-1.0)
