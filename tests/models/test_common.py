"""Model execution options equal the plain path: named remat policies (none | block | dots |
dots_saveable | offload) give the same loss and gradients; bf16 params with float32 master weights
follow the float32 AdamW trajectory exactly; bad names fail naming the key and allowed values."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fairjax import optim
from fairjax.errors import ConfigError
from fairjax.models import common, gpt2, llama


@pytest.mark.parametrize("mod", [gpt2, llama], ids=["gpt2", "llama"])
def test_remat_policies_equal_plain(mod):
    cfg = mod.PRESETS["tiny"]
    params = mod.init_params(cfg, jax.random.PRNGKey(0))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 500, (2, 9)), jnp.int32)

    def vg(remat):
        m = mod.Model(cfg.replace(remat=remat))
        return jax.jit(jax.value_and_grad(
            lambda p: jnp.sum(jnp.square(m.apply({"params": p}, ids).logits)) * 1e-3))(params)

    v0, g0 = vg("none")
    for remat in sorted(set(common.REMAT_POLICIES) - {"none"}):
        v, g = vg(remat)
        np.testing.assert_allclose(v, v0, rtol=1e-6, err_msg=remat)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g0)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=remat)


REMAT_PRIMITIVES = ("checkpoint", "remat2", "remat")


@pytest.mark.parametrize("mod", [gpt2, llama], ids=["gpt2", "llama"])
@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scan"])
def test_each_remat_policy_puts_its_checkpoint_in_the_jaxpr(mod, scan):
    """Equal outputs cannot tell remat from none: the traced forward must hold one checkpoint per
    block (one in the scanned body) carrying the named policy, and none for remat='none'."""
    from trainer_fixtures import jaxpr_eqns

    cfg = mod.PRESETS["tiny"].replace(scan_layers=scan)
    params = mod.init_params(cfg, jax.random.PRNGKey(0))
    ids = jnp.zeros((2, 9), jnp.int32)
    for remat, policy in common.REMAT_POLICIES.items():
        m = mod.Model(cfg.replace(remat=remat))
        jaxpr = jax.make_jaxpr(lambda p, m=m: m.apply({"params": p}, ids).logits)(params)
        ck = [e for e in jaxpr_eqns(jaxpr) if e.primitive.name in REMAT_PRIMITIVES]
        assert len(ck) == (0 if remat == "none" else 1 if scan else cfg.num_layers), remat
        assert all(e.params["policy"] is policy for e in ck), remat


@pytest.mark.parametrize("mod", [gpt2, llama], ids=["gpt2", "llama"])
def test_scan_layers_traces_one_scan_over_the_layers(mod):
    from trainer_fixtures import jaxpr_eqns

    ids = jnp.zeros((2, 9), jnp.int32)
    for scan in (False, True):
        cfg = mod.PRESETS["tiny"].replace(scan_layers=scan)
        params = mod.init_params(cfg, jax.random.PRNGKey(0))
        model = mod.Model(cfg)
        jaxpr = jax.make_jaxpr(lambda p, model=model: model.apply({"params": p}, ids).logits)(params)
        scans = [e.params["length"] for e in jaxpr_eqns(jaxpr) if e.primitive.name == "scan"]
        assert scans == ([cfg.num_layers] if scan else []), scan


def test_bad_remat_name_names_key_and_values():
    with pytest.raises(ConfigError, match=r"remat.*'offlaod'.*(dots_saveable|offload)"):
        gpt2.PRESETS["tiny"].replace(remat="offlaod")


def _optim_cfg(**kw):
    return optim.OptimConfig(**dict(dict(
        lr=1e-2, end_lr_ratio=0.1, warmup_steps=2, schedule="cosine", clip=1.0, b1=0.9, b2=0.95,
        eps=1e-8, weight_decay=0.1, decay_norms_and_biases=False), **kw))


def test_bf16_params_with_float32_master_weights_follow_the_float32_path():
    rng = np.random.default_rng(0)
    p32 = {"w": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32),
           "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}
    grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), p32)
             for _ in range(5)]
    plain = optim.make_optimizer(_optim_cfg(), 10)
    mixed = optim.make_optimizer(_optim_cfg(param_dtype="bfloat16"), 10)
    pb = optim.cast_params(p32, "bfloat16")
    s32, sb = plain.init(p32), mixed.init(pb)
    ref = p32
    for g in grads:  # same float32 gradients (as computed by a bf16 forward, cast up)
        u, s32 = plain.update(g, s32, ref)
        ref = optax.apply_updates(ref, u)
        u, sb = mixed.update(jax.tree.map(lambda x: x.astype(jnp.bfloat16), g), sb, pb)
        pb = optax.apply_updates(pb, u)
        assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(pb))
    # bf16-rounded gradients move the masters by < 1% of the float32 step
    for m, r in zip(jax.tree.leaves(sb.master), jax.tree.leaves(ref)):
        np.testing.assert_allclose(m, r, rtol=2e-2, atol=2e-3)
    for p, m in zip(jax.tree.leaves(pb), jax.tree.leaves(sb.master)):
        np.testing.assert_array_equal(p, m.astype(jnp.bfloat16))  # params = cast(master)
    # exactly the plain path when the gradients are identical float32 values
    mixed2 = optim.make_optimizer(_optim_cfg(param_dtype="bfloat16"), 10)
    s2, q = mixed2.init(optim.cast_params(p32, "bfloat16")), optim.cast_params(p32, "bfloat16")
    s2 = s2._replace(master=p32, inner=plain.init(p32))
    ref, s32 = p32, plain.init(p32)
    for g in grads:
        u, s32 = plain.update(g, s32, ref)
        ref = optax.apply_updates(ref, u)
        u, s2 = mixed2.update(g, s2, q)
        q = optax.apply_updates(q, u)
    for m, r in zip(jax.tree.leaves(s2.master), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(m, r)
    with pytest.raises(ConfigError, match=r"optim.param_dtype='fp8'.*bfloat16"):
        optim.make_optimizer(_optim_cfg(param_dtype="fp8"), 10)
