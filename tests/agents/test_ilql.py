"""ILQL agent == upstream PerTokenIQL on ilql_tiny (forward, losses, grads, AdamW step, Polyak),
plus the awac=0 policy skip, target updates and head helpers."""
import json

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fairjax.agents import ilql as A
from fairjax.io.hf import config_from_hf_dir, load_hf_dir
from fairjax.losses.ilql import ILQLHparams
from fairjax.models import gpt2
from fairjax.models.heads import head_params_to_torch

HEADS_TORCH = {"v": "v", "q1": "q", "q2": "q2"}
TARGET_TORCH = {"q1": "target_q", "q2": "target_q2"}


@pytest.fixture(scope="module")
def fx(fixtures_dir):
    # fairjax's own modules: an import error fails the test (never a skip)
    from fairjax.io import torch_pickle, upstream

    d = fixtures_dir / "ilql_tiny"
    meta = json.loads((d / "meta.json").read_text())
    ref = dict(np.load(d / "reference.npz"))
    batch = {k: jnp.asarray(v) for k, v in np.load(d / "batch.npz").items()}
    mcfg = config_from_hf_dir(fixtures_dir / "gpt2_tiny" / "hf")
    cfg = A.config_from_upstream(meta["ilql"], meta["loss_weights"], alpha=float(ref["hp_alpha"]))
    assert cfg.alpha == pytest.approx(meta["ilql"]["alpha"])
    parts = upstream.split_upstream(torch_pickle.load_torch_pickle(d / "iql_state_dict.pkl"))
    params, frozen = A.params_from_upstream_parts(cfg, parts, mcfg)
    grads = torch_pickle.load_torch_pickle(d / "iql_grads.pkl")
    return dict(meta=meta, ref=ref, batch=batch, mcfg=mcfg, cfg=cfg, model=gpt2.GPT2LMHeadModel(mcfg),
                params=params, frozen=frozen, grads=grads, tol=meta["suggested_tolerances"])


def to_torch_names(params: dict, frozen: dict, mcfg) -> dict[str, np.ndarray]:
    """Our (params, frozen) under upstream PerTokenIQL state-dict names."""
    out = {}
    for prefix, tree in (("model.", params["qv"]), ("lm_policy.", params.get("policy")),
                         ("lm_target.", frozen.get("target"))):
        if tree is not None:
            out.update({prefix + k: v for k, v in gpt2.params_to_hf(tree, mcfg).items()})
    for ours, theirs in HEADS_TORCH.items():
        out.update(head_params_to_torch(params["heads"][ours], theirs))
    for ours, theirs in TARGET_TORCH.items():
        if ours in frozen["target_heads"]:
            out.update(head_params_to_torch(frozen["target_heads"][ours], theirs))
    return out


def test_forward_equals_upstream(fx):
    ref, t = fx["ref"], fx["tol"]["per_step"]
    out = jax.jit(lambda p, f, b: A.forward(fx["model"], fx["cfg"], p, f, b))(
        fx["params"], fx["frozen"], fx["batch"])
    for k in ("vs_all", "q1_all", "q2_all", "target_qs_all"):
        np.testing.assert_allclose(np.asarray(out[k]), ref[k], rtol=t["rtol"], atol=t["atol"],
                                   err_msg=k)
    # Pad positions: upstream feeds positions arange(T) there, we use clip(cumsum(mask)-1, 0) (so
    # left padding works too); pad logits never enter a loss, so compare the real tokens.
    real = np.asarray(fx["batch"]["attn_mask"]) > 0
    np.testing.assert_allclose(np.asarray(out["policy_logits"])[real], ref["policy_logits"][real],
                               rtol=t["rtol"], atol=t["atol"], err_msg="policy_logits")
    np.testing.assert_array_equal(np.asarray(out["select_tokens"]), ref["select_tokens"])


def _loss_and_grads(fx):
    f = lambda p: A.loss_fn(fx["model"], fx["cfg"], p, fx["frozen"], fx["batch"])  # noqa: E731
    return jax.jit(jax.value_and_grad(f, has_aux=True))(fx["params"])


def _sign_sensitive(name: str, fx) -> np.ndarray | None:
    """|upstream grad| below the threshold (None: the parameter got no gradient upstream)."""
    g = fx["grads"].get(name)
    return None if g is None else np.abs(g) < fx["tol"]["post_step"]["sign_sensitive_grad_below"]


def test_losses_grads_and_step_equal_upstream(fx):
    ref, tol, mcfg = fx["ref"], fx["tol"], fx["mcfg"]
    (loss, m), grads = _loss_and_grads(fx)
    for ours, theirs in (("q_loss", "q_loss"), ("v_loss", "v_loss"), ("cql_loss", "cql_loss"),
                         ("dm_loss", "dm_loss"), ("token_loss", "awac_loss"), ("loss", "total_loss")):
        np.testing.assert_allclose(float(m[ours]), float(ref[theirs]), err_msg=ours, **tol["losses"])
    np.testing.assert_allclose(float(loss), float(ref["total_loss"]), **tol["losses"])

    # gradients, under upstream names (tied wte: both uses accumulate, as in torch)
    ours = to_torch_names(grads, {"target_heads": {}}, mcfg)
    assert set(fx["grads"]) <= set(ours), sorted(set(fx["grads"]) - set(ours))
    for name, g in fx["grads"].items():
        np.testing.assert_allclose(ours[name], g, err_msg=name, **tol["grads"])
    extra = {k for k, v in ours.items() if k not in fx["grads"] and np.any(v)}
    assert not extra, f"gradients upstream does not have: {sorted(extra)}"

    # one AdamW step (torch semantics: decoupled decay, bias-corrected moments) + Polyak update
    opt_cfg = fx["meta"]["optimizer"]
    opt = optax.adamw(float(ref["lr"]), b1=opt_cfg["betas"][0], b2=opt_cfg["betas"][1],
                      eps=opt_cfg["eps"], weight_decay=float(ref["weight_decay"]))
    state = opt.init(fx["params"])
    upd, _ = opt.update(grads, state, fx["params"])
    new_params = optax.apply_updates(fx["params"], upd)
    new_frozen = A.update_frozen(fx["cfg"], new_params, fx["frozen"], 1)
    after = to_torch_names(new_params, new_frozen, mcfg)
    online_of = {"target_q.": "q.", "target_q2.": "q2.", "lm_target.": "model."}
    checked = 0
    for key in ref:
        kind, _, name = key.partition(".")
        if kind not in ("post_step", "post_soft_update"):
            continue
        t = tol[kind]
        src = name
        for tp, op in online_of.items():
            if name.startswith(tp):
                src = op + name[len(tp):]
        sens = _sign_sensitive(src, fx)
        atol = np.full(ref[key].shape, t["atol"], np.float32)
        if sens is not None:
            atol[sens] = t["sign_sensitive_atol"]
        err = np.abs(after[name] - ref[key])
        assert np.all(err <= atol), (key, float(err.max()))
        checked += 1
    assert checked == sum(k.startswith(("post_step.", "post_soft_update.")) for k in ref)


def _used_invars(jaxpr) -> set:
    """Variables read by any equation (or returned) of a jaxpr."""
    used = set()
    for eqn in jaxpr.eqns:
        used.update(v for v in eqn.invars if isinstance(v, jex.Var))
    used.update(v for v in jaxpr.outvars if isinstance(v, jex.Var))
    return used


@pytest.fixture(scope="module")
def tiny(fixtures_dir):
    mcfg, base = load_hf_dir(fixtures_dir / "gpt2_tiny" / "hf")
    batch = {k: jnp.asarray(v) for k, v in np.load(fixtures_dir / "ilql_tiny" / "batch.npz").items()}
    return mcfg, base, gpt2.GPT2LMHeadModel(mcfg), batch


def test_awac_zero_skips_policy_trunk(tiny):
    mcfg, base, model, batch = tiny
    rng = jax.random.PRNGKey(0)

    def jaxpr_and_policy_use(awac):
        # train_policy=True keeps the policy in the differentiated params even when awac == 0
        cfg = A.ILQLConfig(hparams=ILQLHparams(awac_weight=awac), train_policy=True)
        params, frozen = A.init_from_bc(cfg, base, base, rng, mcfg.hidden_size, mcfg.vocab_size)
        f = lambda p: A.loss_fn(model, cfg, p, frozen, batch)[0]  # noqa: E731
        traced = jax.jit(f).trace(params)
        closed = traced.jaxpr
        leaves = jax.tree_util.tree_flatten_with_path(params)[0]
        used = _used_invars(closed.jaxpr)
        pol = [v for (path, _), v in zip(leaves, closed.jaxpr.invars)
               if path[0].key == "policy"]
        flops = traced.lower().cost_analysis()  # HLO estimate, no compile needed
        flops = (flops[0] if isinstance(flops, list) else flops).get("flops", 0.0)
        grads = jax.jit(jax.grad(f))(params)["policy"] if awac == 0 else None
        return pol, used, flops, grads

    pol0, used0, flops0, g0 = jaxpr_and_policy_use(0.0)
    pol1, used1, flops1, _ = jaxpr_and_policy_use(1.0)
    assert pol0 and not any(v in used0 for v in pol0)  # no policy param is read at all
    assert all(v in used1 for v in pol1)
    assert all(not np.asarray(x).any() for x in jax.tree.leaves(g0))
    assert flops0 < flops1
    # default: with awac == 0 the policy is frozen (no weight decay / optimizer state for it)
    cfg = A.ILQLConfig(hparams=ILQLHparams(awac_weight=0.0))
    params, frozen = A.init_from_bc(cfg, base, base, rng, mcfg.hidden_size, mcfg.vocab_size)
    assert "policy" not in params and "policy" in frozen
    alg = A.make_algorithm(model, cfg, (params, frozen))
    _, lm_params = alg.policy(params, frozen)
    assert lm_params is frozen["policy"]


def test_target_updates_polyak_and_hard(tiny):
    mcfg, base, model, batch = tiny
    cfg = A.ILQLConfig(hparams=ILQLHparams(awac_weight=0.0), alpha=0.25, hard_update_every=3)
    params, frozen = A.init_from_bc(cfg, base, base, jax.random.PRNGKey(1), mcfg.hidden_size,
                                    mcfg.vocab_size)
    # online params move away from the targets
    params = jax.tree.map(lambda x: x + 1.0, params)
    upd = jax.jit(lambda p, f, s: A.update_frozen(cfg, p, f, s))
    f1 = upd(params, frozen, 1)
    for path, new in jax.tree_util.tree_flatten_with_path(f1["target"])[0]:
        old = _get(frozen["target"], path)
        np.testing.assert_allclose(new, 0.25 * (old + 1.0) + 0.75 * old, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(f1["target_heads"]["q2"]["fc_out"]["bias"],
                               frozen["target_heads"]["q2"]["fc_out"]["bias"] + 0.25, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(f1["policy"]), jax.tree.leaves(frozen["policy"])):
        np.testing.assert_array_equal(a, b)  # untouched
    f3 = upd(params, f1, 3)  # hard update: exact copies
    for a, b in zip(jax.tree.leaves(f3["target"]), jax.tree.leaves(params["qv"])):
        np.testing.assert_array_equal(a, b)
    for k in ("q1", "q2"):
        for a, b in zip(jax.tree.leaves(f3["target_heads"][k]), jax.tree.leaves(params["heads"][k])):
            np.testing.assert_array_equal(a, b)


def _get(tree, path):
    for p in path:
        tree = tree[p.key]
    return tree


def test_heads_helpers_and_shared_trunks(tiny):
    mcfg, base, model, batch = tiny
    rng = jax.random.PRNGKey(2)
    heads = A.init_heads(rng, mcfg.hidden_size, mcfg.vocab_size)
    h = jax.random.normal(rng, (2, 5, mcfg.hidden_size))
    toks = jax.random.randint(rng, (2, 5), 0, mcfg.vocab_size)
    full = A.apply_heads(heads, h)
    assert full["v"].shape == (2, 5) and full["q1"].shape == (2, 5, mcfg.vocab_size)
    at = A.apply_head_at(heads["q1"], h, toks)
    np.testing.assert_allclose(at, jnp.take_along_axis(full["q1"], toks[..., None], -1)[..., 0],
                               rtol=1e-5, atol=1e-6)
    # torch Linear default init bounds: U(±1/sqrt(fan_in))
    assert float(jnp.abs(heads["q1"]["fc_in"]["kernel"]).max()) <= 1 / np.sqrt(mcfg.hidden_size)
    # shared trunks (upstream seperate_policy / seperate_target = False)
    cfg = A.ILQLConfig(hparams=ILQLHparams(awac_weight=1.0), separate_policy=False,
                       separate_target=False)
    params, frozen = A.init_from_bc(cfg, base, base, rng, mcfg.hidden_size, mcfg.vocab_size)
    assert set(params) == {"qv", "heads"} and set(frozen) == {"target_heads"}
    out, ref_logits, (loss, m) = jax.jit(lambda p: (
        A.forward(model, cfg, p, frozen, batch),
        model.apply({"params": base}, batch["tokens"], batch["attn_mask"]).logits,
        A.loss_fn(model, cfg, p, frozen, batch)))(params)
    np.testing.assert_array_equal(out["h_target"], out["h_qv"])
    np.testing.assert_allclose(out["policy_logits"], ref_logits, rtol=1e-5, atol=1e-5)
    assert np.isfinite(float(loss)) and float(m["token_loss"]) > 0
    # detach_pi: logits unchanged, but the trunk below pi gets no AWAC gradient
    cfg_d = A.ILQLConfig(hparams=ILQLHparams(awac_weight=1.0, v_weight=0, q_weight=0, cql_weight=0),
                         detach_pi=True)
    p_d, f_d = A.init_from_bc(cfg_d, base, base, rng, mcfg.hidden_size, mcfg.vocab_size)
    g = jax.jit(jax.grad(lambda p: A.loss_fn(model, cfg_d, p, f_d, batch)[0]))(p_d)["policy"]
    assert not np.asarray(g["h_0"]["attn"]["c_attn"]["kernel"]).any()
    assert np.asarray(g["wte"]["embedding"]).any()
