"""DPO / cDPO / IPO / reference-free on hand-computable inputs."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax.losses.dpo import DPOHParams, dpo_loss

PC = jnp.asarray([-10.0, -4.0])
PR = jnp.asarray([-12.0, -3.0])
RC = jnp.asarray([-11.0, -4.0])
RR = jnp.asarray([-11.0, -4.0])
# h = (pc − pr) − (rc − rr) = [2, −1]
H = np.array([2.0, -1.0])


def _ls(x):
    return -math.log1p(math.exp(-x))  # log σ(x)


def test_sigmoid_and_metrics():
    beta = 0.5
    loss, m = dpo_loss(PC, PR, RC, RR, DPOHParams(beta=beta))
    np.testing.assert_allclose(float(loss), -(_ls(1.0) + _ls(-0.5)) / 2, rtol=1e-6)
    # implicit rewards β(π − π_ref): chosen [0.5, 0], rejected [−0.5, 0.5]
    np.testing.assert_allclose(float(m["rewards/chosen"]), 0.25, rtol=1e-6)
    np.testing.assert_allclose(float(m["rewards/rejected"]), 0.0, atol=1e-7)
    np.testing.assert_allclose(float(m["rewards/margin"]), 0.25, rtol=1e-6)
    assert float(m["rewards/accuracy"]) == 0.5


def test_label_smoothing_ipo_reference_free():
    beta, eps = 0.5, 0.1
    loss, _ = dpo_loss(PC, PR, RC, RR, DPOHParams(beta=beta, label_smoothing=eps))
    want = np.mean([-(1 - eps) * _ls(beta * h) - eps * _ls(-beta * h) for h in H])
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)
    loss, _ = dpo_loss(PC, PR, RC, RR, DPOHParams(beta=beta, loss_type="ipo"))
    np.testing.assert_allclose(float(loss), np.mean((H - 1.0) ** 2), rtol=1e-6)  # 1/(2β) = 1
    loss, m = dpo_loss(PC, PR, RC, RR, DPOHParams(beta=beta, reference_free=True))
    np.testing.assert_allclose(float(loss), -(_ls(1.0) + _ls(-0.5)) / 2, rtol=1e-6)  # h = [2, −1]
    np.testing.assert_allclose(float(m["rewards/chosen"]), beta * (-7.0), rtol=1e-6)


@pytest.mark.parametrize("kw", [{}, {"label_smoothing": 0.2}, {"loss_type": "ipo"},
                                {"reference_free": True}])
def test_grads_jit(kw):
    hp = DPOHParams(beta=0.1, **kw)
    f = lambda *a: dpo_loss(*a, hp)[0]
    np.testing.assert_allclose(float(f(PC, PR, RC, RR)), float(jax.jit(f)(PC, PR, RC, RR)),
                               rtol=1e-6)
    g = jax.grad(f, argnums=(0, 1, 2, 3))(PC, PR, RC, RR)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in g)
    assert not np.any(np.asarray(g[2])) and not np.any(np.asarray(g[3]))  # reference: stop-grad
    assert np.all(np.asarray(g[0]) < 0) and np.all(np.asarray(g[1]) > 0) or kw.get("loss_type")
    if not kw:  # sigmoid DPO: ∂L/∂π_w = −β σ(−βh)/B
        want = -0.1 * (1 / (1 + np.exp(0.1 * H))) / 2
        np.testing.assert_allclose(np.asarray(g[0]), want, rtol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="loss_type"):
        DPOHParams(loss_type="hinge2")
    with pytest.raises(ValueError, match="label_smoothing"):
        DPOHParams(label_smoothing=0.6)
