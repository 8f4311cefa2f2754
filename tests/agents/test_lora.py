"""LoRA: zero-B == base, merge == unmerged, gradients only into adapters + heads, shared-base ILQL
trains on the demo corpus through the ILQL loss, PEFT export reloads exactly, run-dir evaluation."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax.models import gpt2, llama
from fairjax.models import lora as L
from trainer_fixtures import assert_trees_equal, small_config

FAMILIES = {"gpt2": (gpt2, gpt2.GPT2LMHeadModel), "llama": (llama, llama.LlamaForCausalLM)}


def _tiny(family, seed=0):
    mod, cls = FAMILIES[family]
    cfg = mod.PRESETS["tiny"]
    return cls(cfg), mod.init_params(cfg, jax.random.PRNGKey(seed)), cfg


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_zero_b_is_base_and_merge_equals_unmerged(family):
    model, base, cfg = _tiny(family)
    lc = L.LoraConfig(rank=4, alpha=8.0)
    ad = L.init(base, lc, family, jax.random.PRNGKey(1))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 500, (2, 9)), jnp.int32)
    f = lambda p: model.apply({"params": p}, ids).logits  # noqa: E731
    np.testing.assert_array_equal(f(L.apply(base, ad, lc.scale)), f(base))
    ad = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(2), x.shape), ad)
    merged = L.merge(base, ad, lc.scale)
    assert not np.allclose(f(merged), f(base), atol=1e-4)
    np.testing.assert_allclose(f(merged), f(L.apply(base, ad, lc.scale)), atol=1e-5)
    # merge is W + scale * A @ B on exactly the targeted kernels
    k = L.target_paths(base, lc, family)[0]
    flat_m, flat_b = L._flat(merged), L._flat(base)
    np.testing.assert_allclose(flat_m[k] - flat_b[k], lc.scale * ad[k]["a"] @ ad[k]["b"], atol=1e-6)
    untouched = [p for p in flat_b if p not in ad]
    assert untouched and all(np.array_equal(flat_m[p], flat_b[p]) for p in untouched)


def test_peft_export_round_trip(tmp_path):
    from safetensors.numpy import load_file

    model, base, cfg = _tiny("llama")
    lc = L.LoraConfig(rank=2, alpha=4.0, targets=r"self_attn/(q|k|v|o)_proj/kernel$")
    ad = jax.tree.map(lambda x: x + 0.1, L.init(base, lc, "llama", jax.random.PRNGKey(0)))
    out = L.write_peft_dir(tmp_path / "peft", ad, lc, "llama")
    conf = json.loads((out / "adapter_config.json").read_text())
    assert conf["peft_type"] == "LORA" and conf["r"] == 2 and conf["lora_alpha"] == 4.0
    assert sorted(conf["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    t = load_file(str(out / "adapter_model.safetensors"))
    a = t["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = t["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    d = cfg.hidden_size
    assert a.shape == (2, d) and b.shape == (cfg.num_heads * cfg.head_dim, 2)  # PEFT [r,in]/[out,r]
    back, lc2 = L.read_peft_dir(out, base, "llama")
    assert lc2.rank == 2 and lc2.alpha == 4.0 and set(back) == set(ad)
    for k in ad:
        np.testing.assert_array_equal(back[k]["a"], ad[k]["a"])
        np.testing.assert_array_equal(back[k]["b"], ad[k]["b"])
    wrong = llama.init_params(llama.PRESETS["tiny"].replace(hidden_size=32, num_heads=2,
                                                            num_kv_heads=2), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="do not fit"):
        L.read_peft_dir(out, wrong, "llama")


@pytest.mark.slow
def test_shared_base_ilql_trains_adapters_and_heads_only(tmp_path):
    from fairjax.runs import restore_run
    from fairjax.train.build import train

    cfg = small_config("ilql", **{"train.steps": 24, "train.log_every": 4, "train.eval_every": 0,
                                  "optim.lr": 3e-3, "lora.enabled": True, "lora.rank": 4,
                                  "pipeline.bc_warm_start": False, "pipeline.evaluate": False})
    res = train(cfg, tmp_path)
    run = restore_run(tmp_path, "latest")
    # the trained params are adapters + heads; the base sits in frozen, untouched
    flat = {L.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(run.params)[0]}
    assert flat and all(k.endswith(("/a", "/b")) or k.startswith("heads/") for k in flat)
    from fairjax.io.checkpoint import load_model_dir

    _, init_params, _ = load_model_dir(tmp_path / "model")
    for x, y in zip(jax.tree.leaves(run.frozen["base"]), jax.tree.leaves(init_params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    logs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logs if r["split"] == "train"]
    assert losses[-1] < losses[0], losses
    # gradients reach only adapters and heads; B starts at zero and moved
    assert any(float(jnp.abs(ad["b"]).max()) > 0 for ad in run.params["qv"].values())
    # the target adapters are Polyak-tracked copies (moved, but not equal to the online ones)
    k = next(iter(run.params["qv"]))
    tb, ob = run.frozen["target"][k]["b"], run.params["qv"][k]["b"]
    assert float(jnp.abs(tb).max()) > 0 and not np.allclose(tb, ob)
    assert res.step == 24


def _bc_batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 900, (2, 12)).astype(np.int32)
    return {"tokens": tokens, "attn_mask": np.ones((2, 12), np.float32),
            "state_idxs": np.tile(np.arange(5, 12), (2, 1)).astype(np.int32),
            "action_idxs": np.tile(np.arange(5, 11), (2, 1)).astype(np.int32),
            "rewards": np.zeros((2, 6), np.float32), "terminals": np.tile([0] * 6 + [1], (2, 1))}


def test_lora_bc_and_alol_reference_is_the_base():
    from fairjax.agents import lora as AL
    from fairjax.agents import lm as LM

    model, base, cfg = _tiny("gpt2")
    lc = L.LoraConfig(rank=2)
    alg = AL.loraize(lambda m, lm: LM.make_algorithm(m, LM.LMConfig(), lm), model, base, lc, "gpt2")
    params, frozen = alg.init(jax.random.PRNGKey(0))
    assert set(frozen) == {"base"} and all(set(v) == {"a", "b"} for v in params.values())
    batch = _bc_batch()
    g = jax.grad(lambda p: alg.loss(p, frozen, batch, None)[0])(params)
    assert any(float(jnp.abs(v["a"]).max()) == 0 and float(jnp.abs(v["b"]).max()) > 0
               for v in g.values())  # B = 0: dL/dA = 0, dL/dB != 0 at init
    assert set(jax.tree.leaves(jax.tree.map(lambda x: x.shape, g))) == set(
        jax.tree.leaves(jax.tree.map(lambda x: x.shape, params)))


def test_lora_dropout_reaches_the_objective_loss():
    """lora.dropout in the BC objective: the loss and its gradient depend on the step key (two
    keys differ, one key repeats), and without a key (eval) equal the no-dropout loss."""
    from fairjax.agents import lm as LM
    from fairjax.agents import lora as AL

    model, base, cfg = _tiny("gpt2")
    batch = _bc_batch()

    def loss(lc, key):
        alg = AL.loraize(lambda m, lm: LM.make_algorithm(m, LM.LMConfig(), lm), model, base, lc,
                         "gpt2")
        params, frozen = alg.init(jax.random.PRNGKey(0))
        params = jax.tree.map(lambda x: x + 0.05, params)  # B != 0: the adapters act
        return jax.value_and_grad(lambda p: alg.loss(p, frozen, batch, key)[0])(params)

    drop, plain = L.LoraConfig(rank=2, dropout=0.5), L.LoraConfig(rank=2)
    k0, k1 = jax.random.PRNGKey(0), jax.random.PRNGKey(1)
    (v0, g0), (v1, _), (v0b, _) = loss(drop, k0), loss(drop, k1), loss(drop, k0)
    (vp, gp), (ve, ge) = loss(plain, k0), loss(drop, None)
    assert float(v0) != float(v1) and float(v0) == float(v0b)
    assert float(v0) != float(vp)
    assert not np.allclose(jax.tree.leaves(g0)[0], jax.tree.leaves(gp)[0])
    np.testing.assert_allclose(float(ve), float(vp), rtol=1e-6)
    assert_trees_equal(ge, gp, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["alol", "dpo"])
def test_reference_objectives_start_from_a_lora_bc_run(tmp_path, algorithm):
    """A-LoL and DPO keep the initial policy as their frozen reference; when that policy is a LoRA
    BC run, the reference is an adapter set over the shared base (its scale and dropout rate
    static), and both train with LoRA from it."""
    from fairjax.train.build import train

    lora = {"lora.enabled": True, "lora.rank": 4, "train.eval_every": 0}
    train(small_config("bc", **{"train.steps": 2, **lora}), tmp_path / "bc")
    res = train(small_config(algorithm, **{"train.steps": 2, "init.policy": str(tmp_path / "bc"),
                                           **lora}), tmp_path / algorithm)
    assert res.step == 2
    logs = [json.loads(l) for l in (tmp_path / algorithm / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in logs if r["split"] == "train")
