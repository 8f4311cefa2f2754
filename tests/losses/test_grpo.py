"""GRPO / RLOO losses: closed forms on hand-computed cases, KL = 0 and ratio = 1 on-policy, and
loss + gradient == trl's own `GRPOTrainer._compute_loss` / `RLOOTrainer._compute_loss` (the real
trl methods, run on a stub trainer whose log-prob function returns the given tensor)."""
import math
from collections import defaultdict
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax.losses.grpo import (GRPOHParams, group_advantages, grpo_loss, k3_kl, reduce_tokens)
from fairjax.losses.rloo import kl_penalized_rewards, rloo_advantages, rloo_loss


def test_group_advantages_closed_form():
    r = np.array([1.0, 3.0, 0.0, 0.0, 2.0, 4.0], np.float32)  # groups of 2: (1,3) (0,0) (2,4)
    a = np.asarray(group_advantages(r, 2, scale=False))
    np.testing.assert_allclose(a, [-1, 1, 0, 0, -1, 1], atol=1e-6)
    s = np.asarray(group_advantages(r, 2, scale=True))
    std = math.sqrt(2.0)  # unbiased std of (1, 3) and of (2, 4)
    np.testing.assert_allclose(s, [-1 / (std + 1e-4), 1 / (std + 1e-4), 0, 0,
                                   -1 / (std + 1e-4), 1 / (std + 1e-4)], rtol=1e-6)
    g3 = np.asarray(group_advantages(np.array([0.0, 1.0, 5.0]), 3, scale=True))
    np.testing.assert_allclose(g3, (np.array([0, 1, 5]) - 2) / (np.std([0, 1, 5], ddof=1) + 1e-4),
                               rtol=1e-6)
    np.testing.assert_array_equal(group_advantages(np.array([3.0, 4.0]), 1), [0.0, 0.0])
    with pytest.raises(ValueError, match="group_size=4 does not divide"):
        group_advantages(r, 4)


def test_rloo_advantages_closed_form():
    r = np.array([1.0, 2.0, 6.0, 0.0, 4.0, 8.0], np.float32)  # groups of 3
    a = np.asarray(rloo_advantages(r, 3))
    # b_0 = (2+6)/2 = 4, b_1 = (1+6)/2 = 3.5, b_2 = 1.5; group 2: b = 6, 4, 2
    np.testing.assert_allclose(a, [-3, -1.5, 4.5, -6, 0, 6], atol=1e-6)
    n = np.asarray(rloo_advantages(r, 3, normalize=True))
    np.testing.assert_allclose(n, (a - a.mean()) / (a.std(ddof=1) + 1e-4), rtol=1e-5)
    with pytest.raises(ValueError, match="group_size >= 2"):
        rloo_advantages(r, 1)
    old = np.array([[-1.0, -2.0], [-0.5, -0.5]], np.float32)
    ref = np.array([[-1.5, -1.0], [-0.5, -3.0]], np.float32)
    m = np.array([[1, 1], [1, 0]], np.float32)
    np.testing.assert_allclose(kl_penalized_rewards(np.array([1.0, 2.0]), old, ref, m, 0.5),
                               [1 - 0.5 * (0.5 - 1.0), 2 - 0.5 * 0.0], rtol=1e-6)


def _case(seed=0, n=6, t=5):
    rng = np.random.default_rng(seed)
    logps = rng.normal(-2, 0.5, (n, t)).astype(np.float32)
    old = (logps + rng.normal(0, 0.3, (n, t))).astype(np.float32)  # some ratios leave [0.8, 1.2]
    ref = (logps + rng.normal(0, 0.3, (n, t))).astype(np.float32)
    adv = rng.normal(0, 1, n).astype(np.float32)
    lens = rng.integers(1, t + 1, n)
    mask = (np.arange(t)[None] < lens[:, None]).astype(np.float32)
    return logps, old, ref, adv, mask


def test_grpo_loss_hand_computed():
    # one sequence of two tokens, one of one token; ε = 0.2, β = 0.5
    logps = np.array([[0.0, np.log(1.5)], [np.log(0.5), 0.0]], np.float32)
    old = np.zeros((2, 2), np.float32)
    ref = np.array([[0.0, 0.0], [0.0, 0.0]], np.float32)
    adv = np.array([2.0, -1.0], np.float32)
    mask = np.array([[1, 1], [1, 0]], np.float32)
    # token losses: seq0: ρ=1 → −2; ρ=1.5 (A>0) → −min(3, 2.4) = −2.4 ; seq1: ρ=0.5, A<0 →
    # −min(−0.5, −0.8) = 0.8.  k3: seq0 tok1: e^{-log1.5} + log1.5 − 1; seq1: e^{log2} − log 2 − 1
    k01 = 1 / 1.5 + np.log(1.5) - 1
    k10 = 2.0 - np.log(2.0) - 1
    l00, l01, l10 = -2.0, -2.4 + 0.5 * k01, 0.8 + 0.5 * k10
    kw = dict(epsilon_low=0.2, epsilon_high=0.2, beta=0.5)
    expect = {"grpo": ((l00 + l01) / 2 + l10) / 2, "bnpo": (l00 + l01 + l10) / 3,
              "dapo": (l00 + l01 + l10) / 3, "dr_grpo": (l00 + l01 + l10) / (2 * 2)}
    for lt, want in expect.items():
        loss, m = grpo_loss(logps, old, ref, adv, mask, loss_type=lt, **kw)
        np.testing.assert_allclose(float(loss), want, rtol=1e-5, err_msg=lt)
    _, m = grpo_loss(logps, old, ref, adv, mask, loss_type="grpo", **kw)
    np.testing.assert_allclose(float(m["clip_ratio/high"]), 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(float(m["clip_ratio/low"]), 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(float(m["kl"]), (k01 + k10) / 3, rtol=1e-5)
    # DAPO with a global token count of 6 (e.g. another micro-batch elsewhere)
    loss, _ = grpo_loss(logps, old, ref, adv, mask, loss_type="dapo", num_items=6.0, **kw)
    np.testing.assert_allclose(float(loss), (l00 + l01 + l10) / 6, rtol=1e-5)


def test_on_policy_ratio_one_kl_zero_and_gradient_is_policy_gradient():
    logps, _, _, adv, mask = _case(1)
    loss_fn = lambda lp: grpo_loss(lp, lp, lp, adv, mask, beta=0.1, loss_type="bnpo")
    (loss, m), g = jax.value_and_grad(loss_fn, has_aux=True)(jnp.asarray(logps))
    assert float(m["kl"]) == 0.0 and abs(float(m["ratio_mean"]) - 1.0) < 1e-7
    assert float(m["clip_ratio/region"]) == 0.0
    # ∇ = −A·m/Σm (REINFORCE with the group advantage; the k3 KL has zero gradient at ref = logp)
    np.testing.assert_allclose(np.asarray(g), -adv[:, None] * mask / mask.sum(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(loss), -(adv[:, None] * mask).sum() / mask.sum(), rtol=1e-5)
    assert np.all(np.asarray(k3_kl(logps, logps)) == 0)


def test_reduce_tokens_and_errors():
    x = np.ones((2, 4), np.float32)
    m = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], np.float32)
    assert float(reduce_tokens(x, m, "dr_grpo", max_completion_length=8)) == pytest.approx(3 / 16)
    with pytest.raises(ValueError, match="needs ref_logps"):
        grpo_loss(x, x, None, np.zeros(2), m, beta=0.1)
    with pytest.raises(ValueError, match="loss_type"):
        GRPOHParams(loss_type="ppo")


def test_rloo_loss_hand_computed():
    logps = np.array([[np.log(2.0), 0.0], [0.0, 0.0]], np.float32)
    old = np.zeros((2, 2), np.float32)
    mask = np.array([[1, 1], [1, 1]], np.float32)
    adv = np.array([1.0, -3.0], np.float32)
    loss, m = rloo_loss(logps, old, adv, mask, epsilon_low=0.2, epsilon_high=0.2)
    # seq ratios 2 (clipped at 1.2, A>0) and 1: losses −1.2 and 3
    np.testing.assert_allclose(float(loss), (-1.2 + 3.0) / 2, rtol=1e-6)
    assert float(m["clip_ratio/high"]) == 0.5


# ----------------------------------------------------------------------------- trl oracle
import torch  # noqa: E402  (test-only oracle, with trl)


def _stub_trainer(logps_t, loss_type, beta, eps_low, eps_high, max_len):
    """A stand-in `self` for trl's `_compute_loss`: every attribute it reads, and a per-token
    log-prob function that returns the given (grad-tracking) tensor."""
    acc = SimpleNamespace(num_processes=1, reduce=lambda x, reduction="sum": x,
                          gather=lambda x: x, gather_for_metrics=lambda x: x)
    args = SimpleNamespace(delta=None, use_bias_correction_kl=False)
    return SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps_t, torch.zeros_like(logps_t),
                                                            None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level="token", beta=beta, args=args, loss_type=loss_type,
        epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=False,
        vllm_importance_sampling_correction=False, model=SimpleNamespace(training=False),
        current_gradient_accumulation_steps=1, max_completion_length=max_len,
        _entropy_bonus_enabled=False, _metrics={"eval": defaultdict(list)}, accelerator=acc)


def _trl_inputs(n, t, old, ref, adv, mask):
    return {"prompt_ids": torch.zeros((n, 1), dtype=torch.long),
            "prompt_mask": torch.ones((n, 1), dtype=torch.long),
            "completion_ids": torch.zeros((n, t), dtype=torch.long),
            "completion_mask": torch.tensor(mask),
            "old_per_token_logps": torch.tensor(old), "ref_per_token_logps": torch.tensor(ref),
            "advantages": torch.tensor(adv), "num_items_in_batch": torch.tensor(mask.sum())}


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("beta,eps_high", [(0.0, 0.2), (0.04, 0.28)])
def test_grpo_loss_equals_trl(loss_type, beta, eps_high):
    from trl.trainer.grpo_trainer import GRPOTrainer

    logps, old, ref, adv, mask = _case(7, n=8, t=6)
    max_len = 9  # dr_grpo normalises by the configured max completion length, not T
    lp_t = torch.tensor(logps, requires_grad=True)
    stub = _stub_trainer(lp_t, loss_type, beta, 0.2, eps_high, max_len)
    want = GRPOTrainer._compute_loss(stub, None, _trl_inputs(8, 6, old, ref, adv, mask))
    want.backward()
    fn = lambda lp: grpo_loss(lp, old, ref if beta else None, adv, mask, epsilon_low=0.2,
                              epsilon_high=eps_high, beta=beta, loss_type=loss_type,
                              max_completion_length=max_len)
    (loss, m), g = jax.value_and_grad(fn, has_aux=True)(jnp.asarray(logps))
    np.testing.assert_allclose(float(loss), want.item(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(g), lp_t.grad.numpy(), rtol=1e-4, atol=1e-7)
    logged = stub._metrics["eval"]
    np.testing.assert_allclose(float(m["clip_ratio/low"]), logged["clip_ratio/low_mean"][0], atol=1e-6)
    np.testing.assert_allclose(float(m["clip_ratio/high"]), logged["clip_ratio/high_mean"][0], atol=1e-6)
    assert float(m["clip_ratio/region"]) > 0  # the case exercises the clip
    if beta:
        np.testing.assert_allclose(float(m["kl"]), logged["kl"][0], rtol=1e-5)


def test_rloo_loss_equals_trl():
    from trl.trainer.rloo_trainer import RLOOTrainer

    logps, old, _, adv, mask = _case(3, n=8, t=6)
    old = (logps + np.random.default_rng(4).normal(0, 0.1, logps.shape)).astype(np.float32)
    old_seq = (old * mask).sum(-1)
    lp_t = torch.tensor(logps, requires_grad=True)
    stub = _stub_trainer(lp_t, "rloo", 0.0, 0.2, 0.2, 6)
    inputs = {**_trl_inputs(8, 6, old, old, adv, mask), "old_logps": torch.tensor(old_seq)}
    want = RLOOTrainer._compute_loss(stub, None, inputs)
    want.backward()
    fn = lambda lp: rloo_loss(lp, old, adv, mask, epsilon_low=0.2, epsilon_high=0.2)
    (loss, m), g = jax.value_and_grad(fn, has_aux=True)(jnp.asarray(logps))
    np.testing.assert_allclose(float(loss), want.item(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(g), lp_t.grad.numpy(), rtol=1e-4, atol=1e-7)
    assert float(m["clip_ratio/region"]) > 0
    np.testing.assert_allclose(float(m["clip_ratio/region"]),
                               stub._metrics["eval"]["clip_ratio/region_mean"][0], atol=1e-6)
