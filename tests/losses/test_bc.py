"""BC loss: closed form, both normalisations, padding, jit, gradients; BC agent vs upstream."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax.agents import lm
from fairjax.io.hf import load_hf_dir
from fairjax.losses import common
from fairjax.losses.bc import BCHparams, bc_loss
from fairjax.models import gpt2


def _tiny(extra_t=0, extra_s=0):
    """Prompt token at 0; actions at positions 1, 2 emitting tokens[2], tokens[3]; vocab 3."""
    tokens = np.array([[0, 1, 2, 1] + [1] * extra_t], np.int32)
    mask = np.array([[1, 1, 1, 1] + [0] * extra_t], np.float32)
    logits = np.zeros((1, 4 + extra_t, 3), np.float32)
    logits[0, 1, 2] = math.log(2.0)  # p(token 2 | pos 1) = 2/4
    logits[0, 4:] = np.random.default_rng(0).normal(size=(extra_t, 3)) * 30
    batch = {"tokens": tokens, "attn_mask": mask,
             "action_idxs": np.array([[1, 2] + [0] * extra_s], np.int32),
             "state_idxs": np.array([[1, 2, 3] + [0] * extra_s], np.int32),
             "terminals": np.array([[0, 0, 1] + [1] * extra_s], np.int32)}
    return jnp.asarray(logits), {k: jnp.asarray(v) for k, v in batch.items()}


@pytest.mark.parametrize("tw", [0.0, 0.5])
def test_closed_form_both_normalisations(tw):
    logits, batch = _tiny()
    num = math.log(2) + math.log(3) + tw * math.log(3)
    up, m = bc_loss(logits, batch, BCHparams(transition_weight=tw))
    assert float(up) == pytest.approx(num / 3, rel=1e-6)  # all 3 non-pad next tokens
    assert float(m["n_actions"]) == 2
    pt, _ = bc_loss(logits, batch, BCHparams(transition_weight=tw, normalize="per_token"))
    assert float(pt) == pytest.approx(num / (2 + tw), rel=1e-6)  # weighted tokens only
    with pytest.raises(ValueError, match="normalize"):
        BCHparams(normalize="mean")


@pytest.mark.parametrize("normalize", ["upstream", "per_token"])
def test_padding_jit_and_gradients(normalize):
    hp = BCHparams(normalize=normalize)
    logits, batch = _tiny()
    plogits, pbatch = _tiny(extra_t=3, extra_s=2)
    base = float(bc_loss(logits, batch, hp)[0])
    assert float(bc_loss(plogits, pbatch, hp)[0]) == pytest.approx(base, rel=1e-6)
    f = lambda x: bc_loss(x, pbatch, hp)[0]  # noqa: E731
    assert float(jax.jit(f)(plogits)) == pytest.approx(float(f(plogits)), rel=1e-6)
    g = np.asarray(jax.jit(jax.grad(f))(plogits))
    assert np.all(np.isfinite(g))
    assert not g[0, 0].any()  # prompt position (transition weight 0)
    assert not g[0, 3:].any()  # last real token predicts padding; pads predict nothing
    assert g[0, 1].any() and g[0, 2].any()


def test_common_helpers():
    x = jnp.arange(24.0).reshape(2, 4, 3)
    np.testing.assert_array_equal(common.gather_positions(x, jnp.array([[3, 0], [1, 1]])),
                                  [[x[0, 3], x[0, 0]], [x[1, 1], x[1, 1]]])
    logits = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7))
    toks = jnp.array([[1, 2, 3, 4, 5], [0, 6, 1, 1, 2]])
    lp = common.token_logprobs(logits, toks)
    want = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits[:, :-1])),
                              np.asarray(toks[:, 1:, None]), -1)[..., 0]
    np.testing.assert_allclose(lp, want, rtol=1e-5, atol=1e-6)
    assert float(common.masked_mean(jnp.ones(3), jnp.zeros(3))) == 0.0
    assert float(common.masked_mean(jnp.array([1.0, 3.0, 100.0]), jnp.array([1, 1, 0]))) == 2.0


def test_bc_agent_equals_upstream_awac_term(fixtures_dir):
    """With beta = 0 exponential weights (w = 1 on actions, transition weight 0), upstream's AWAC
    term on ilql_tiny is exactly BC of the policy trunk (= gpt2_tiny) on that batch."""
    d = fixtures_dir / "ilql_tiny"
    meta = json.loads((d / "meta.json").read_text())
    ilql = meta["ilql"]
    assert ilql["exp_weights"] and ilql["beta"] == 0 and ilql["transition_weight"] == 0
    ref = np.load(d / "reference.npz")
    batch = {k: jnp.asarray(v) for k, v in np.load(d / "batch.npz").items()}
    mcfg, params = load_hf_dir(fixtures_dir / "gpt2_tiny" / "hf")
    alg = lm.make_algorithm(gpt2.GPT2LMHeadModel(mcfg), lm.LMConfig(), params)
    p, frozen = alg.init(jax.random.PRNGKey(0))
    assert frozen == {} and alg.update_frozen(p, frozen, 1) == {}
    loss, m = jax.jit(alg.loss)(p, frozen, batch, jax.random.PRNGKey(0))
    np.testing.assert_allclose(float(loss), float(ref["awac_loss"]),
                               **meta["suggested_tolerances"]["losses"])
