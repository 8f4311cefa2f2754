"""generate.py: ILQL one-step logits == upstream sample_raw (fixture), KV-cache decoding == an
uncached loop, left-padding invariance, stop at </a>, modes (greedy/top-k=1/beam=1), best-of-n."""
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax.agents import ilql as A
from fairjax.generate import (GenerationConfig, Policy, first_argmax, generate, left_pad,
                              next_token_logits, process_logits, sample_categorical)
from fairjax.errors import ConfigError
from fairjax.models import gpt2, llama

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def upstream(fixtures_dir):
    from fairjax.io.hf import config_from_hf_dir
    from fairjax.io.torch_pickle import load_torch_pickle
    from fairjax.io.upstream import split_upstream

    d = fixtures_dir / "ilql_tiny"
    meta = json.loads((d / "meta.json").read_text())
    gen = dict(np.load(d / "generation_reference.npz"))
    mcfg = config_from_hf_dir(fixtures_dir / "gpt2_tiny" / "hf")
    cfg = A.config_from_upstream(meta["ilql"], meta["loss_weights"])
    params, frozen = A.params_from_upstream_parts(
        cfg, split_upstream(load_torch_pickle(d / "iql_state_dict.pkl")), mcfg)
    pol = Policy.guided(gpt2.GPT2LMHeadModel(mcfg), A.decoding_fields(cfg, params, frozen))
    return pol, gen, meta


def _finite_close(a, b, atol):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
    np.testing.assert_allclose(a[np.isfinite(a)], b[np.isfinite(b)], atol=atol, rtol=1e-4)


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_one_step_perturbed_logits_equal_upstream(upstream, variant):
    pol, gen, _ = upstream
    pre = "" if variant == "v1" else "v2_"
    cfg = GenerationConfig(temperature=float(gen[f"{pre}temp"]),
                           top_k=int(gen.get(f"{pre}top_k", 0)) if variant == "v2" else 0,
                           top_p=float(gen.get(f"{pre}top_p", 1.0)) if variant == "v2" else 1.0,
                           adv_weight=float(gen["adv_weight"]))
    ids = gen["prompt_tokens"]
    full, base, adv = next_token_logits(pol, ids, np.ones_like(ids), cfg, int(gen["pad_token_id"]))
    _finite_close(full[0], gen[f"{pre}full_logits"], atol=1e-4)
    _finite_close(full[0], gen[f"{pre}full_logits_formula"], atol=1e-4)
    if variant == "v1":
        _finite_close(base[0], gen["base_logits"], atol=1e-4)
        np.testing.assert_allclose(float(gen["adv_weight"]) * adv[0], np.where(
            np.isfinite(gen["adv_logits"]), gen["adv_logits"], float(gen["adv_weight"]) * adv[0]),
            atol=1e-4)


def test_cached_generation_equals_fixture_first_step(upstream):
    """The KV-cached decoder samples step 0 from the same logits (greedy = their argmax); KL of a
    one-token sample equals log pi_full(a) - log pi_base(a) computed from the fixture logits."""
    pol, gen, _ = upstream
    ids = gen["prompt_tokens"]
    pad = int(gen["pad_token_id"])
    cfg = GenerationConfig(max_new_tokens=1, mode="greedy", adv_weight=float(gen["adv_weight"]))
    out = generate(pol, ids, np.ones_like(ids), jax.random.PRNGKey(0), cfg, eoa_id=-1, pad_id=pad)
    full = gen["full_logits"]
    tok = int(np.argmax(np.where(np.isfinite(full), full, -np.inf)))
    assert int(out.tokens[0, 0]) == tok
    lf = jax.nn.log_softmax(jnp.asarray(full))[tok]
    lb = jax.nn.log_softmax(jnp.asarray(gen["base_logits"]))[tok]
    np.testing.assert_allclose(out.log_prob[0], lf, atol=1e-4)
    np.testing.assert_allclose(out.kl[0], lf - lb, atol=1e-4)
    np.testing.assert_allclose(out.adv_sum[0], (gen["target_q_min"][tok] - gen["v"]), atol=1e-4)


def _uncached_greedy(model, params, ids, mask, n, pad_id):
    seq, m = np.asarray(ids), np.asarray(mask)
    for _ in range(n):
        lg = model.apply({"params": params}, jnp.asarray(seq), jnp.asarray(m)).logits[:, -1]
        nxt = np.asarray(jnp.argmax(lg.at[:, pad_id].set(-jnp.inf), -1))[:, None]
        seq, m = np.concatenate([seq, nxt], 1), np.concatenate([m, np.ones_like(nxt)], 1)
    return seq[:, ids.shape[1]:]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_cache_decoding_equals_uncached_and_padding_invariant(family):
    mod = {"gpt2": gpt2, "llama": llama}[family]
    cls = gpt2.GPT2LMHeadModel if family == "gpt2" else llama.LlamaForCausalLM
    mcfg = mod.PRESETS["tiny"]
    params = mod.init_params(mcfg, jax.random.PRNGKey(3))
    model, pad = cls(mcfg), mcfg.vocab_size - 1
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, pad, n).astype(np.int32) for n in (7, 4, 9)]
    ids, mask = left_pad(rows, 9, pad)
    cfg = GenerationConfig(max_new_tokens=5, mode="greedy")
    out = generate(Policy.lm(model, params), ids, mask, jax.random.PRNGKey(0), cfg,
                   eoa_id=-1, pad_id=pad)
    ref = _uncached_greedy(model, params, ids, mask, 5, pad)
    np.testing.assert_array_equal(out.tokens, ref)
    alone = generate(Policy.lm(model, params), rows[1][None], np.ones((1, 4), np.int32),
                     jax.random.PRNGKey(0), cfg, eoa_id=-1, pad_id=pad)
    np.testing.assert_array_equal(alone.tokens[0], out.tokens[1])
    np.testing.assert_allclose(alone.log_prob[0], out.log_prob[1], atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_compiled_decoder_copies_no_cache_buffer(family):
    """Each decoding step writes the new keys/values into the loop-carried cache in place: the
    optimised HLO holds no copy of a cache-shaped buffer (reading the cache through a reshape
    once made XLA:CPU copy every layer's cache four times per step)."""
    from fairjax.generate import _compiled
    from fairjax.models.common import init_cache

    mod = {"gpt2": gpt2, "llama": llama}[family]
    cls = gpt2.GPT2LMHeadModel if family == "gpt2" else llama.LlamaForCausalLM
    mcfg = mod.PRESETS["tiny"]
    params = mod.init_params(mcfg, jax.random.PRNGKey(3))
    pad, rows, plen = mcfg.vocab_size - 1, 3, 5
    cfg = GenerationConfig(max_new_tokens=6)
    policy = Policy.lm(cls(mcfg), params)
    static = __import__("dataclasses").replace(policy, trunks=(), heads=None)
    ids = jnp.zeros((rows, plen), jnp.int32)
    hlo = _compiled(static, cfg, -1, pad, None).lower(
        policy.trunks, dict(policy.heads), ids, jnp.ones_like(ids), jax.random.PRNGKey(0)
    ).compile().as_text()
    shape = init_cache(mcfg, rows, plen + cfg.max_new_tokens).k[0].shape
    cache = f"[{','.join(map(str, shape))}]"
    assert f"{cache}" in hlo  # the cache is in the program
    copies = [line for line in hlo.splitlines() if " copy(" in line and cache in line.split("=")[1]]
    assert not copies, f"{len(copies)} cache copies, e.g. {copies[0].strip()[:160]}"


@pytest.fixture(scope="module")
def tiny_lm():
    mcfg = gpt2.PRESETS["tiny"]
    params = gpt2.init_params(mcfg, jax.random.PRNGKey(7))
    ids = np.random.default_rng(1).integers(0, 1000, (4, 6)).astype(np.int32)
    return Policy.lm(gpt2.GPT2LMHeadModel(mcfg), params), ids, np.ones_like(ids), 1005


def test_stops_at_eoa_and_pads_after(tiny_lm):
    pol, ids, mask, pad = tiny_lm
    greedy = generate(pol, ids, mask, jax.random.PRNGKey(0), GenerationConfig(max_new_tokens=4,
                      mode="greedy"), eoa_id=-1, pad_id=pad)
    eoa = int(greedy.tokens[0, 1])  # make row 0's second greedy token the stop token
    out = generate(pol, ids, mask, jax.random.PRNGKey(0), GenerationConfig(max_new_tokens=4,
                   mode="greedy"), eoa_id=eoa, pad_id=pad)
    assert bool(out.finished[0]) and int(out.lengths[0]) == int(np.argmax(greedy.tokens[0] == eoa)) + 1
    n = int(out.lengths[0])
    assert np.all(np.asarray(out.tokens[0, n:]) == pad)
    for r in range(4):  # rows without the stop token run to the limit
        if eoa not in np.asarray(greedy.tokens[r]):
            assert int(out.lengths[r]) == 4 and not bool(out.finished[r])


def test_modes_reduce_to_greedy(tiny_lm):
    pol, ids, mask, pad = tiny_lm
    run = lambda **kw: generate(pol, ids, mask, jax.random.PRNGKey(5),
                                GenerationConfig(max_new_tokens=5, **kw), eoa_id=-1, pad_id=pad)
    g = run(mode="greedy")
    np.testing.assert_array_equal(run(mode="sample", top_k=1).tokens, g.tokens)
    np.testing.assert_array_equal(run(mode="beam", num_beams=1).tokens, g.tokens)
    s1, s2 = run(mode="sample"), run(mode="sample")
    np.testing.assert_array_equal(s1.tokens, s2.tokens)  # same key, same sample
    # a wide beam finds a sequence at least as likely as greedy (scores are cumulative log-probs)
    b = run(mode="beam", num_beams=4)
    assert np.all(np.asarray(b.log_prob) >= np.asarray(g.log_prob) - 1e-4)


def test_best_of_n_reranks_by_log_prob(tiny_lm):
    pol, ids, mask, pad = tiny_lm
    kw = dict(max_new_tokens=4, temperature=2.0, rerank_adv_weight=0.0, rerank_logprob_weight=1.0)
    best = generate(pol, ids, mask, jax.random.PRNGKey(2), GenerationConfig(num_generations=3, **kw),
                    eoa_id=-1, pad_id=pad)
    # the same draws, one row per sample: prompt i's samples are rows 3i..3i+2
    each = generate(pol, np.repeat(ids, 3, 0), np.repeat(mask, 3, 0), jax.random.PRNGKey(2),
                    GenerationConfig(**kw), eoa_id=-1, pad_id=pad)
    lp = np.asarray(each.log_prob).reshape(4, 3)
    assert len({tuple(t) for t in np.asarray(each.tokens)}) > 4  # the samples differ
    pick = lp.argmax(1) + 3 * np.arange(4)
    np.testing.assert_allclose(best.log_prob, lp.max(1), atol=1e-5)
    np.testing.assert_array_equal(best.tokens, np.asarray(each.tokens)[pick])
    # KL starts at the best-of-n bound log n - (n - 1) / n
    np.testing.assert_allclose(best.kl, np.asarray(each.kl)[pick] + np.log(3) - 2 / 3, atol=1e-5)


def test_process_logits_top_p_keeps_the_crossing_token():
    x = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    kept = np.isfinite(np.asarray(process_logits(x, 1.0, 0, 0.6)))
    np.testing.assert_array_equal(kept[0], [True, True, False, False])
    kept = np.isfinite(np.asarray(process_logits(x, 1.0, 0, 0.45)))
    np.testing.assert_array_equal(kept[0], [True, False, False, False])


@pytest.mark.parametrize("v,block", [(37, 8), (600, 256)])
def test_sample_categorical_draws_the_softmax_and_never_an_excluded_token(v, block):
    """The one-uniform-per-row inverse-CDF sampler: empirical frequencies of 20k draws match
    softmax(logits) within 3x the expected sampling noise (total variation), tokens at -inf
    (at block edges too) are never drawn, and every row gets its own draw."""
    rng = np.random.default_rng(0)
    logits = (2.0 * rng.normal(size=v)).astype(np.float32)
    logits[rng.choice(v, v // 3, replace=False)] = -np.inf
    logits[[0, block - 1, block, v - 1]] = -np.inf
    n = 20000
    x = jnp.broadcast_to(jnp.asarray(logits), (n, v))
    tok = np.asarray(jax.jit(sample_categorical, static_argnums=2)(jax.random.PRNGKey(0), x, block))
    assert tok.dtype == np.int32 and tok.shape == (n,)
    assert np.isfinite(logits[tok]).all()
    p = np.asarray(jax.nn.softmax(jnp.asarray(logits)))
    tv = 0.5 * np.abs(np.bincount(tok, minlength=v) / n - p).sum()
    noise = 0.5 * np.sqrt(2 * p * (1 - p) / (np.pi * n)).sum()  # E[TV] of n exact draws
    assert tv < 3 * noise, (tv, noise)


def test_first_argmax_equals_argmax_with_ties():
    x = jnp.asarray([[0.0, 2.0, 2.0, -jnp.inf], [-jnp.inf] * 4, [1.0, 0.0, 1.0, 1.0]])
    np.testing.assert_array_equal(first_argmax(x), jnp.argmax(x, -1))


def test_bad_config_errors():
    with pytest.raises(ConfigError, match="mode"):
        GenerationConfig(mode="nucleus")
    with pytest.raises(ConfigError, match="temperature"):
        GenerationConfig(temperature=0.0)
    with pytest.raises(ConfigError, match="nothing to sample"):
        GenerationConfig(include_logits=False, include_adv=False)


SHARDED = r"""
import jax, numpy as np
from fairjax.generate import GenerationConfig, Policy, generate
from fairjax.models import gpt2
from fairjax.parallel import MeshConfig, make_mesh
assert jax.device_count() == 8
mcfg = gpt2.PRESETS["tiny"]
pol = Policy.lm(gpt2.GPT2LMHeadModel(mcfg), gpt2.init_params(mcfg, jax.random.PRNGKey(0)))
ids = np.random.default_rng(0).integers(0, 1000, (8, 5)).astype(np.int32)
cfg = GenerationConfig(max_new_tokens=4, temperature=1.5)
one = generate(pol, ids, np.ones_like(ids), jax.random.PRNGKey(1), cfg, eoa_id=-1, pad_id=1005)
mesh = make_mesh(MeshConfig(data=-1, fsdp=1, tensor=1))
many = generate(pol, ids, np.ones_like(ids), jax.random.PRNGKey(1), cfg, eoa_id=-1, pad_id=1005,
                mesh=mesh)
assert len(many.tokens.sharding.device_set) == 8
np.testing.assert_array_equal(np.asarray(one.tokens), np.asarray(many.tokens))
np.testing.assert_allclose(np.asarray(one.log_prob), np.asarray(many.log_prob), rtol=1e-5)
print("OK")
"""


def test_data_parallel_generation_equals_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_generate_texts_in_order_with_layout(fixtures_dir):
    from fairjax.io.tokenizer import Tokenizer
    from fairjax.generate import generate_texts
    from fairjax.io.hf import load_hf_dir

    mcfg, params = load_hf_dir(fixtures_dir / "gpt2_tiny" / "hf")
    tok = Tokenizer.from_dir(fixtures_dir / "gpt2_tiny" / "hf")
    pol = Policy.lm(gpt2.GPT2LMHeadModel(mcfg), params)
    prompts = ["a short one", "a much longer prompt " * 5, "mid length prompt here", "x"]
    cfg = GenerationConfig(max_new_tokens=3, mode="greedy")
    rows = generate_texts(pol, tok, prompts, cfg, rng=jax.random.PRNGKey(0), batch_size=3,
                          buckets=(16, 64))
    assert [r["prompt"] for r in rows] == prompts
    for p, r in zip(prompts, rows):
        alone = generate_texts(pol, tok, [p], cfg, rng=jax.random.PRNGKey(0), batch_size=1,
                               buckets=(16, 64))[0]
        assert r["tokens"] == alone["tokens"]  # batch composition and padding change nothing
        assert r["num_new_tokens"] == len(r["tokens"]) <= 3
        assert set(r) >= {"text", "finished", "log_prob", "kl", "adv_sum"}


def test_one_compilation_serves_every_beta(upstream):
    from fairjax import generate as G

    pol, gen, _ = upstream
    ids = gen["prompt_tokens"]
    outs = []
    for beta in (1.0, 8.0):
        cfg = GenerationConfig(max_new_tokens=2, mode="greedy", adv_weight=beta)
        outs.append(generate(pol, ids, np.ones_like(ids), jax.random.PRNGKey(0), cfg, eoa_id=-1,
                             pad_id=int(gen["pad_token_id"])))
        if beta == 1.0:
            size = G._compiled.cache_info().currsize
    assert G._compiled.cache_info().currsize == size  # no new program for the second beta
    # beta 8's first token is the argmax of the fixture's perturbed logits
    full = gen["full_logits"]
    assert int(outs[1].tokens[0, 0]) == int(np.argmax(np.where(np.isfinite(full), full, -np.inf)))


def test_perturbation_options_exp_adv_and_adv_clip_reach_the_logits():
    """generation.exp_adv=False (step-function log-weights) and adv_clip, from the eval config to
    the perturbation added to the policy logits."""
    from fairjax import evaluate as E
    from fairjax.generate import GenerationConfig, advantage_logits
    from trainer_fixtures import load_config

    q, v = jnp.array([[1.0, -1.0, 3.0]]), jnp.array([0.5])
    a = np.asarray(q - v[:, None])
    pert, adv = advantage_logits(q, v, GenerationConfig(adv_weight=2.0))
    np.testing.assert_allclose(pert, 2.0 * a, rtol=1e-6)
    np.testing.assert_allclose(adv, a, rtol=1e-6)
    pert, _ = advantage_logits(q, v, GenerationConfig(adv_weight=0.8, exp_adv=False))
    np.testing.assert_allclose(pert, np.log([[0.8, 0.2, 0.8]]), rtol=1e-6)
    pert, _ = advantage_logits(q, v, GenerationConfig(adv_weight=2.0, adv_clip=1.0))
    np.testing.assert_allclose(pert, np.minimum(2.0 * a, 1.0), rtol=1e-6)
    c = load_config("eval")
    c.generation.exp_adv, c.generation.adv_clip = False, 1.5
    g = E._generation(c, adv_weight=4.0)
    assert (g.exp_adv, g.adv_clip, g.adv_weight) == (False, 1.5, 4.0)
    c.generation.adv_clip = 0.0  # 0 = off
    assert E._generation(c).adv_clip is None


def test_cpu_decoder_compiles_without_ynn_dot_fusions(tiny_lm, monkeypatch):
    """On the CPU the decoding loop is compiled with XLA:CPU's YNNPACK dot fusions off (its skinny
    matmuls run ~2x faster on Eigen's dots, docs/performance.md §8), the same program otherwise:
    greedy tokens and summed log-probs equal those of the default-options compile; the option
    is scoped to the decoder (a plain jitted dot keeps YNNPACK) and $FAIRJAX_DECODE_CPU_YNN=1
    turns it off."""
    import dataclasses

    from fairjax import generate as G

    if jax.default_backend() != "cpu":
        pytest.skip("the option is CPU-only")
    policy, ids, mask, pad = tiny_lm
    cfg = GenerationConfig(max_new_tokens=5, mode="greedy")
    static = dataclasses.replace(policy, trunks=(), heads=None)
    args = (policy.trunks, dict(policy.heads), jnp.asarray(ids), jnp.asarray(mask),
            jax.random.PRNGKey(0))
    assert G.decoder_compiler_options("cpu") == G.CPU_DECODE_OPTIONS
    assert G.decoder_compiler_options("gpu") is None
    decoder = G._compiled(static, cfg, -1, pad, None).lower(*args).compile()
    assert "ynn_fusion" not in decoder.as_text()
    x, w = jnp.ones((16, 256)), jnp.ones((256, 512))
    assert "ynn_fusion" in jax.jit(jnp.dot).lower(x, w).compile().as_text()

    fn = functools.partial(G._decode, static, cfg=cfg, eoa_id=-1, pad_id=pad)
    default = jax.jit(fn)(*args)
    tuned = decoder(*args)
    np.testing.assert_array_equal(np.asarray(tuned.tokens), np.asarray(default.tokens))
    np.testing.assert_allclose(np.asarray(tuned.log_prob), np.asarray(default.log_prob),
                               rtol=1e-5, atol=1e-5)

    G.decoder_compiler_options.cache_clear()
    monkeypatch.setenv(G.CPU_YNN_ENV, "1")
    try:
        assert G.decoder_compiler_options("cpu") is None
    finally:
        G.decoder_compiler_options.cache_clear()
