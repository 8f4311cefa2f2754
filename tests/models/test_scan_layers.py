"""`model.scan_layers`: blocks under nn.scan equal the unrolled model (logits, loss + grads, with
remat, KV-cache decoding, a BC / ILQL training step), the layout conversions are exact both ways,
checkpoints in one layout load into a model of the other, and wrong layouts / values fail clearly."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from fairjax.errors import CheckpointMismatchError, ConfigError
from fairjax.generate import GenerationConfig, Policy, generate
from fairjax.models import common, gpt2, layout, llama

from trainer_fixtures import small_config

MODS = pytest.mark.parametrize("mod", [gpt2, llama], ids=["gpt2", "llama"])


@functools.lru_cache(maxsize=None)
def _init(mod):  # one compiled init per family for the whole module (params do not depend on
    return jax.device_get(mod.init_params(mod.PRESETS["tiny"], jax.random.PRNGKey(0)))  # remat


def _tiny(mod, **kw):
    return mod.PRESETS["tiny"].replace(**kw), _init(mod)


def _ids(b=2, t=9, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 500, (b, t)), jnp.int32)


def _close(a, b, tol=1e-5):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol,
                                                         atol=tol), a, b)


@MODS
def test_init_is_the_stacked_unrolled_shape(mod):
    cfg, params = _tiny(mod)
    scanned = mod.init_params(cfg.replace(scan_layers=True), jax.random.PRNGKey(1))
    prefix = layout.detect_layout(scanned)[1]
    assert layout.detect_layout(scanned) == ("scanned", prefix, cfg.num_layers)
    assert layout.detect_layout(params) == ("unrolled", prefix, cfg.num_layers)
    assert common.flat_shapes(scanned) == common.flat_shapes(layout.scan_params(params, 2))
    # layers are initialised independently (split params rng), not one copy broadcast
    k = jax.tree.leaves(scanned[prefix])[-1]
    assert not np.allclose(np.asarray(k[0]), np.asarray(k[1]))


@MODS
@pytest.mark.parametrize("remat", ["none", "block"])
def test_logits_loss_and_grads_equal_unrolled(mod, remat):
    cfg, params = _tiny(mod, remat=remat)
    sc = cfg.replace(scan_layers=True)
    sparams = layout.scan_params(params, cfg.num_layers)
    ids = _ids()
    mask = jnp.ones_like(ids).at[0, :3].set(0)  # left padding on one row

    def loss_fn(config):
        model = mod.Model(config)

        def f(p):
            logits = model.apply({"params": p}, ids, mask).logits  # [B, T, V]
            logp = jax.nn.log_softmax(logits[:, :-1])
            nll = -jnp.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
            return jnp.sum(nll * mask[:, 1:]) / jnp.sum(mask[:, 1:]), logits
        return jax.jit(jax.value_and_grad(f, has_aux=True))

    (l0, logits0), g0 = loss_fn(cfg)(params)
    (l1, logits1), g1 = loss_fn(sc)(sparams)
    _close(logits1, logits0)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
    unscanned = layout.unscan_params(g1)
    assert jax.tree.structure(unscanned) == jax.tree.structure(g0)
    _close(unscanned, g0)


@MODS
def test_greedy_and_beam_decoding_with_kv_cache_equal(mod):
    cfg, params = _tiny(mod)
    sc = cfg.replace(scan_layers=True)
    sparams = layout.scan_params(params, cfg.num_layers)
    ids = _ids(2, 5, seed=1)
    mask = jnp.ones_like(ids).at[1, :2].set(0)
    cache = common.init_cache(sc, 2, 12)
    assert cache.k.shape == (cfg.num_layers, 2, cfg.num_kv_heads, 12, cfg.head_dim)
    for mode, beams in (("greedy", 1), ("beam", 2)):
        gcfg = GenerationConfig(max_new_tokens=6, mode=mode, num_beams=beams)
        outs = [generate(Policy.lm(mod.Model(c), p), ids, mask, jax.random.PRNGKey(0), gcfg,
                         eoa_id=1005, pad_id=0) for c, p in ((cfg, params), (sc, sparams))]
        np.testing.assert_array_equal(np.asarray(outs[1].tokens), np.asarray(outs[0].tokens))
        _close(outs[1].log_prob, outs[0].log_prob)
    # the cached step-by-step logits equal the full forward of the scanned model
    full = mod.Model(sc).apply({"params": sparams}, ids, mask).logits
    m12 = jnp.concatenate([mask, jnp.ones((2, 7), jnp.int32)], 1)
    out = mod.Model(sc).apply({"params": sparams}, ids[:, :3], m12, cache=cache)
    out2 = mod.Model(sc).apply({"params": sparams}, ids[:, 3:], m12, cache=out.cache)
    _close(jnp.concatenate([out.logits, out2.logits], 1), full)


@MODS
def test_round_trip_exact(mod):
    cfg, params = _tiny(mod)
    host = jax.tree.map(np.asarray, params)
    s = layout.scan_params(host, cfg.num_layers)
    back = layout.unscan_params(s)
    jax.tree.map(np.testing.assert_array_equal, back, host)
    jax.tree.map(np.testing.assert_array_equal, layout.scan_params(back, cfg.num_layers), s)
    # nested trees (ILQL trunks, optimizer moments) convert at every level
    nested = {"trunks": {"policy": host, "qv": host}, "step": np.int32(3)}
    s2 = layout.scan_params(nested, cfg.num_layers)
    assert layout.detect_layout(s2["trunks"]["qv"])[0] == "scanned"
    jax.tree.map(np.testing.assert_array_equal, layout.unscan_params(s2), nested)


@MODS
def test_hf_conversion_both_layouts(mod):
    cfg, params = _tiny(mod)
    sc = cfg.replace(scan_layers=True)
    sd = mod.params_to_hf(params, cfg)
    sparams = mod.params_from_hf(sd, sc)
    assert layout.detect_layout(sparams)[0] == "scanned"
    jax.tree.map(np.testing.assert_array_equal, layout.unscan_params(sparams),
                 jax.tree.map(np.asarray, params))
    out = mod.params_to_hf(sparams, sc)  # export unstacks
    assert sorted(out) == sorted(sd)
    for k in sd:
        np.testing.assert_array_equal(out[k], sd[k])


def _model_cfg(model_dir, scan: bool):
    return small_config("bc", **{"model.init": str(model_dir), "model.scan_layers": scan})


@pytest.mark.parametrize("saved_scan", [True, False])
def test_checkpoint_loads_into_the_other_layout(tmp_path, saved_scan):
    from fairjax.io.checkpoint import load_model_dir, save_model_dir
    from fairjax.train.build import build_model

    cfg, params = _tiny(gpt2)
    tok = None  # params only: the build path reads the model dir's config and weights
    saved_cfg = cfg.replace(scan_layers=saved_scan)
    saved = layout.to_layout(jax.tree.map(np.asarray, params), saved_cfg)
    save_model_dir(tmp_path / "m", saved_cfg, saved, tok)
    c2, p2, _ = load_model_dir(tmp_path / "m")
    assert c2.scan_layers is saved_scan and layout.detect_layout(p2)[0] == (
        "scanned" if saved_scan else "unrolled")
    # loaded into a model of the other layout (the train build path) and back
    mcfg, model, p3, _ = build_model(_model_cfg(tmp_path / "m", not saved_scan), tmp_path / "run",
                                     "")
    assert mcfg.scan_layers is (not saved_scan)
    assert layout.detect_layout(p3)[0] == ("unrolled" if saved_scan else "scanned")
    ids = _ids()
    _close(model.apply({"params": p3}, ids).logits,
           gpt2.Model(cfg).apply({"params": params}, ids).logits)
    back = layout.to_layout(p3, saved_cfg)
    jax.tree.map(np.testing.assert_array_equal, back, p2)
    # a dir whose params were written in the other layout than its json says converts on load
    from fairjax.io.checkpoint import save_pytree

    save_pytree(tmp_path / "m" / "params", jax.tree.map(np.asarray, p3), overwrite=True)
    _, p4, _ = load_model_dir(tmp_path / "m")
    jax.tree.map(np.testing.assert_array_equal, p4, p2)


def test_wrong_layout_fails_naming_what_it_found():
    cfg, params = _tiny(gpt2)
    deep = gpt2.PRESETS["tiny"].replace(num_layers=12)
    with pytest.raises(CheckpointMismatchError,
                       match=r"found unrolled layers h_0\.\.h_1 \(2 blocks\) at key path /h_\*, "
                             r"the model expects unrolled layers h_0\.\.h_11"):
        layout.to_layout(params, deep, source="ckpt")
    with pytest.raises(CheckpointMismatchError,
                       match=r"found unrolled layers h_0\.\.h_1.*expects scanned layers 'h' with "
                             r"a leading axis of 12 \(model\.scan_layers=True\)"):
        layout.to_layout(params, deep.replace(scan_layers=True), source="ckpt")
    scanned = layout.scan_params(params, 2)
    with pytest.raises(CheckpointMismatchError, match=r"found scanned layers 'h' with leading "
                                                      r"axis 2 at key path /h, the model expects"):
        layout.to_layout(scanned, deep)
    with pytest.raises(CheckpointMismatchError, match=r"(?s)^ckpt does not match.*found neither "
                                                      r"unrolled \(h_0\.\.\) nor scanned \('h'\)"):
        layout.to_layout({"wte": params["wte"]}, cfg, source="ckpt")
    with pytest.raises(CheckpointMismatchError, match=r"found unrolled layers layers_0\.\.layers_1"):
        layout.to_layout(llama.init_params(llama.PRESETS["tiny"], jax.random.PRNGKey(0)), cfg)
    with pytest.raises(CheckpointMismatchError, match=r"found unrolled layers h_0\.\.h_1 "
                                                      r"\(2 blocks\), expected h_0\.\.h_2"):
        layout.scan_params(params, 3)


def test_bad_scan_layers_value_and_lora_fail_at_validation(tmp_path):
    from fairjax.train.build import validate_config

    cfg = small_config("bc")
    cfg.model = ConfigDict({**cfg.model.to_dict(), "scan_layers": "false"})
    with pytest.raises(ConfigError, match=r"config\.model\.scan_layers='false' \(str\); expected a "
                                          r"bool"):
        validate_config(cfg)
    with pytest.raises(ConfigError, match=r"scan_layers=1 \(int\)"):
        gpt2.PRESETS["tiny"].replace(scan_layers=1)
    cfg = small_config("bc", **{"model.scan_layers": True, "lora.enabled": True})
    with pytest.raises(ConfigError, match=r"config\.model\.scan_layers=True with "
                                          r"config\.lora\.enabled=True"):
        validate_config(cfg)
    from fairjax.models import lora

    scanned = gpt2.init_params(gpt2.PRESETS["tiny"].replace(scan_layers=True), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="LoRA on a scan_layers model.*not wired yet"):
        lora.init(scanned, lora.LoraConfig(), "gpt2", jax.random.PRNGKey(0))
    with pytest.raises(ConfigError, match="scale_attn_by_inverse_layer_idx"):
        gpt2.PRESETS["tiny"].replace(scan_layers=True, scale_attn_by_inverse_layer_idx=True)


def test_partition_rules_keep_the_layer_axis_unsharded():
    cfg = llama.PRESETS["tiny"].replace(scan_layers=True)
    params = llama.init_params(cfg, jax.random.PRNGKey(0))
    specs = common.match_partition_rules(cfg.partition_rules(), params)
    assert specs["layers"]["self_attn"]["q_proj"]["kernel"] == common.P(None, "fsdp", "tensor")
    assert specs["embed_tokens"]["embedding"] == common.P("tensor", "fsdp")


FIRST = {"train.steps": 1, "train.log_every": 1, "train.eval_every": 0, "train.save_every": 1}


@pytest.mark.slow  # two short training runs each (~40-100 s on 2 shared cores)
@pytest.mark.parametrize("algo", ["bc", "ilql"])
def test_first_training_step_equals_unrolled(tmp_path, algo):
    from fairjax.runs import restore_run
    from fairjax.train.build import train

    res = {}
    for scan in (False, True):
        cfg = small_config(algo, **FIRST, **{"model.scan_layers": scan})
        res[scan] = train(cfg, tmp_path / f"scan_{scan}")
    np.testing.assert_allclose(res[True].metrics["loss"], res[False].metrics["loss"], rtol=1e-5)
    # the trained params equal after one update too (scanned run unstacked)
    p_scan = layout.unscan_params(jax.device_get(res[True].state["params"]))
    _close(p_scan, jax.device_get(res[False].state["params"]), tol=1e-4)
    # the scanned run restores (model/ records scan_layers) with stacked params
    run = restore_run(tmp_path / "scan_True", "latest")
    assert run.model_config.scan_layers is True
    _close(run.params, jax.device_get(res[True].state["params"]))
