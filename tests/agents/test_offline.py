"""A-LoL / DPO / PHF agents around a tiny random GPT-2: consistency with the pure losses, frozen
vs precomputed reference, value-head fitting, and loss decrease over a few optax steps."""
import jax
import numpy as np
import optax
import pytest

from fairjax.agents import alol as alol_agent
from fairjax.agents import dpo as dpo_agent
from fairjax.agents import phf as phf_agent
from fairjax.losses.alol import ALoLHParams, alol_loss
from fairjax.losses.common import token_logprobs
from fairjax.losses.dpo import DPOHParams
from fairjax.losses.phf import PHFHParams
from fairjax.models.gpt2 import GPT2Config, GPT2LMHeadModel, init_params

CFG = GPT2Config(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, max_positions=16)
MODEL = GPT2LMHeadModel(CFG)
B, T, P = 4, 10, 4  # prompt = first P tokens


@pytest.fixture(scope="module")
def lm_params():
    return init_params(CFG, jax.random.PRNGKey(0))


def toy_batch(seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
    lengths = np.array([10, 9, 8, 7])
    attn = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
    tokens[attn == 0] = 31  # pad id
    prompt = np.zeros((B, T), np.float32)
    prompt[:, :P] = 1
    resp = attn * (1 - prompt)
    return {"tokens": tokens, "attn_mask": attn, "prompt_mask": prompt, "response_mask": resp,
            "sequence_reward": np.array([1.0, 0.2, 0.8, 0.5], np.float32)}


def run_steps(algo, batch, steps=6, lr=3e-3):
    """A few eager Adam steps (eager: a tiny model runs faster than it compiles)."""
    params, frozen = algo.init(jax.random.PRNGKey(1))
    opt = optax.adam(lr)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        (loss, m), g = jax.value_and_grad(algo.loss, has_aux=True)(params, frozen, batch, None)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, loss, m, g

    losses, nlls, grads = [], [], None
    for _ in range(steps):
        params, state, loss, m, g = step(params, state)
        losses.append(float(loss))
        nlls.append(float(m["nll_per_token"]) if "nll_per_token" in m else None)
        grads = grads or g
    return losses, grads, params, nlls


def test_alol_agent_matches_pure_loss_and_precomputed(lm_params):
    batch = toy_batch()
    vh = alol_agent.init_value_head(jax.random.PRNGKey(2), CFG.hidden_size)
    cfg = alol_agent.ALoLConfig(ALoLHParams("a_lol", ppo_clip=0.9))
    ref = jax.tree.map(lambda x: x * 1.05, lm_params)  # a reference that differs from the policy
    algo = alol_agent.make_algorithm(MODEL, cfg, lm_params, ref_params=ref, value_head_params=vh)
    params, frozen = algo.init(jax.random.PRNGKey(0))
    # frozen = {} with precomputed ref log-probs and advantage must give the same loss
    algo0 = alol_agent.make_algorithm(MODEL, cfg, lm_params, keep_reference=False)
    p0, f0 = algo0.init(jax.random.PRNGKey(0))
    assert f0 == {} and set(frozen) == {"ref", "value_head"}

    @jax.jit  # one compile for all three computations
    def run(params, frozen, p0, batch):
        loss, _ = algo.loss(params, frozen, batch, None)
        # by hand from the pieces
        out = MODEL.apply({"params": lm_params}, batch["tokens"], batch["attn_mask"])
        ref_out = MODEL.apply({"params": ref}, batch["tokens"], batch["attn_mask"])
        lp, rlp = (token_logprobs(o.logits, batch["tokens"]) for o in (out, ref_out))
        hidden, ctx = alol_agent.prompt_hidden_states(MODEL, ref, batch)
        values = alol_agent.predict_values(vh, hidden, ctx)
        mask = batch["response_mask"][:, 1:]
        want, _ = alol_loss(lp, rlp, mask, batch["sequence_reward"], values, cfg.hparams)
        pre = dict(batch, ref_logprobs=rlp, advantage=batch["sequence_reward"] - values)
        loss0, _ = algo0.loss(p0, {}, pre, None)
        return loss, want, loss0

    loss, want, loss0 = run(params, frozen, p0, batch)
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
    np.testing.assert_allclose(float(loss0), float(loss), rtol=1e-5)
    with pytest.raises(KeyError, match="ref"):
        jax.eval_shape(algo0.loss, p0, f0, batch, None)


def test_target_mask_from_layout():
    tokens = np.zeros((2, 8), np.int32)
    batch = {"tokens": tokens, "attn_mask": np.ones((2, 8), np.float32),
             "action_idxs": np.array([[2, 3, 4, 0], [3, 4, 0, 0]], np.int32),
             "terminals": np.array([[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]], np.int32)}
    want = np.zeros((2, 7), np.float32)
    want[0, [2, 3, 4]] = 1
    want[1, [3, 4]] = 1
    np.testing.assert_array_equal(np.asarray(alol_agent.target_mask(batch, 8)), want)
    ctx = np.asarray(alol_agent.context_mask(batch))
    np.testing.assert_array_equal(ctx[0], [1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(ctx[1], [1, 1, 1, 1, 0, 0, 0, 0])


@pytest.mark.parametrize("alg", ["a_lol_seq", "r_gold"])
def test_alol_training_reduces_nll(lm_params, alg):
    """The weighted NLL of the A > 0 examples goes down. (The ratio variants' LOSS VALUE can rise
    while training works: ρ = π/π_ref grows from 1 towards 1 + ε as π improves.)"""
    batch = dict(toy_batch(), value=np.array([0.3, 0.3, 0.9, 0.3], np.float32))
    algo = alol_agent.make_algorithm(MODEL, alol_agent.ALoLConfig(ALoLHParams(alg)), lm_params)
    losses, grads, _, nlls = run_steps(algo, batch)
    assert nlls[-1] < nlls[0]
    if alg == "r_gold":
        assert losses[-1] < losses[0]
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(grads))


def test_value_head_fit_and_mask():
    rng = np.random.default_rng(0)
    N, L, d = 64, 6, 16
    hidden = rng.normal(size=(N, L, d)).astype(np.float32)
    mask = (np.arange(L)[None] < rng.integers(2, L + 1, N)[:, None]).astype(np.float32)
    # target depends on the mean of the first feature over the prompt, squashed into (0, 1)
    feat = (hidden[..., 0] * mask).sum(1) / mask.sum(1)
    rewards = 1 / (1 + np.exp(-2 * feat))
    cfg = alol_agent.ValueHeadConfig(num_heads=2, dropout=0.0)
    params0 = alol_agent.init_value_head(jax.random.PRNGKey(0), d, cfg)
    mse0 = float(np.mean((np.asarray(alol_agent.predict_values(params0, hidden, mask, cfg))
                          - rewards) ** 2))
    params, info = alol_agent.fit_value_head(hidden, mask, rewards, steps=60, lr=3e-3, seed=0,
                                             cfg=cfg, init_params=params0)
    assert info["mse"] < 0.5 * mse0
    assert info["mse"] == pytest.approx(min([mse0] + info["mse_history"]), rel=1e-5)
    # masked (non-prompt) positions do not influence V (upstream lacked the key-padding mask)
    noisy = hidden + (1 - mask)[..., None] * 100.0
    np.testing.assert_allclose(np.asarray(alol_agent.predict_values(params, noisy, mask, cfg)),
                               np.asarray(alol_agent.predict_values(params, hidden, mask, cfg)),
                               rtol=1e-5, atol=1e-6)
    v = np.asarray(alol_agent.predict_values(params, hidden, mask, cfg))
    assert np.all((v > 0) & (v < 1))  # sigmoid · max_value
    adv = alol_agent.compute_advantages(v, rewards)
    np.testing.assert_allclose(adv, rewards - v, rtol=1e-6)


def dpo_batch(seed=0):
    a, b = toy_batch(seed), toy_batch(seed + 1)
    b["tokens"][:, :P] = a["tokens"][:, :P]  # shared prompt
    out = {}  # B/2 pairs, so the stacked [B, T] forward reuses the shapes of the other tests
    for prefix, x in (("chosen_", a), ("rejected_", b)):
        out.update({prefix + k: x[k][: B // 2] for k in ("tokens", "attn_mask", "response_mask")})
    return out


def test_dpo_agent(lm_params):
    batch = dpo_batch()
    cfg = dpo_agent.DPOConfig(DPOHParams(beta=0.5))
    algo = dpo_agent.make_algorithm(MODEL, cfg, lm_params)
    algo0 = dpo_agent.make_algorithm(MODEL, cfg, lm_params, keep_reference=False)
    params, frozen = algo.init(jax.random.PRNGKey(0))
    p0, f0 = algo0.init(None)
    assert set(frozen) == {"ref"} and f0 == {}

    @jax.jit
    def run(params, frozen, batch):
        loss, m = algo.loss(params, frozen, batch, None)
        logps = lambda pre: dpo_agent.sequence_logps(MODEL, lm_params, batch[pre + "tokens"],
                                                     batch[pre + "attn_mask"],
                                                     batch[pre + "response_mask"])
        pre = dict(batch, chosen_ref_logps=logps("chosen_"), rejected_ref_logps=logps("rejected_"))
        return loss, m, algo0.loss(params, {}, pre, None)[0]

    loss, _, loss0 = run(params, frozen, batch)
    np.testing.assert_allclose(float(loss), np.log(2.0), rtol=1e-5)  # policy == reference
    np.testing.assert_allclose(float(loss0), np.log(2.0), rtol=1e-5)  # precomputed reference sums
    losses, grads, params, _ = run_steps(algo, batch)
    assert losses[-1] < losses[0]
    _, m, _ = run(params, frozen, batch)
    assert float(m["rewards/accuracy"]) == 1.0 and float(m["rewards/margin"]) > 0
    with pytest.raises(KeyError, match="rejected_tokens"):
        jax.eval_shape(algo.loss, params, frozen,
                       {k: v for k, v in batch.items() if k != "rejected_tokens"}, None)


@pytest.mark.parametrize("objective", ["unlikelihood", "awr", "rwr"])
def test_phf_agent(lm_params, objective):
    batch = toy_batch()
    rng = np.random.default_rng(3)
    batch = {"tokens": batch["tokens"], "attn_mask": batch["attn_mask"],
             "token_scores": rng.uniform(0, 0.01, (B, T)).astype(np.float32)}
    cfg = phf_agent.PHFConfig(PHFHParams(objective, ul_threshold=0.005, awr_beta=1.0))
    algo = phf_agent.make_algorithm(MODEL, cfg, lm_params, CFG.hidden_size)
    losses, grads, _, _ = run_steps(algo, batch)
    assert losses[-1] < losses[0]
    if objective in ("awr", "rwr"):
        g = np.asarray(grads["value_head"]["kernel"])
        # RWR (α = 1): the zero-init head gets no gradient, as upstream; AWR trains it
        assert (np.any(g) if objective == "awr" else not np.any(g))
    else:
        assert "value_head" not in grads
    module, lm = algo.policy(*algo.init(jax.random.PRNGKey(0)))
    assert module is MODEL and jax.tree.structure(lm) == jax.tree.structure(lm_params)


def test_phf_trains_on_response_tokens_only(lm_params):
    """With a prompt/response split, PHF scores only the response tokens (like BC) unless
    train_on_prompt: changing a prompt-only token target does not change the loss."""
    batch = toy_batch()
    batch["token_scores"] = np.full((B, T), 0.001, np.float32)
    hp = PHFHParams("awr", awr_beta=1.0, normalize_advantage=True)
    resp = phf_agent.make_algorithm(MODEL, phf_agent.PHFConfig(hp), lm_params, CFG.hidden_size)
    full = phf_agent.make_algorithm(MODEL, phf_agent.PHFConfig(hp, train_on_prompt=True), lm_params,
                                    CFG.hidden_size)
    params, frozen = resp.init(jax.random.PRNGKey(0))
    m_resp = resp.loss(params, frozen, batch, None)[1]["nll_per_token"]
    m_full = full.loss(params, frozen, batch, None)[1]["nll_per_token"]
    want = -(np.asarray(token_logprobs(MODEL.apply({"params": lm_params}, batch["tokens"],
                                                   batch["attn_mask"]).logits, batch["tokens"]))
             * batch["response_mask"][:, 1:]).sum() / batch["response_mask"][:, 1:].sum()
    np.testing.assert_allclose(float(m_resp), want, rtol=1e-4)
    assert abs(float(m_full) - float(m_resp)) > 1e-4
