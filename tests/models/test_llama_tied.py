"""Tied embeddings on LLaMA (`tie_word_embeddings=True`: logits = h·Eᵀ, no `lm_head`).

The fixture is a random transformers `LlamaForCausalLM` with tied embeddings, built here from the
llama_tiny fixture's config (shapes read from its config.json) and saved with `save_pretrained`.
Every check compares against transformers (torch, test-only) or against a path that would differ
if the tie were dropped: a separate random `lm_head` changes the logits, the embedding gradient
collects both uses of E, and an exported checkpoint must follow an updated embedding.
"""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax.agents import ilql as I
from fairjax.agents import lm as LM
from fairjax.data.layout import collate, layout_example
from fairjax.io import hf
from fairjax.io.tokenizer import Tokenizer
from fairjax.losses import vocab as V
from fairjax.losses.ilql import ILQLHparams
from fairjax.models import layout, llama, lora

HERE = Path(__file__).resolve().parent
TOL = 1e-5
TEXTS = [("Write a job ad for: Thinknum | New York | Backend Engineer",
          "We're looking for back-end engineers who like data."),
         ("Upflow | Paris or Remote", "Join us!")]


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def _tree_rel(ga, gb):
    return max(_rel(x, y) for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)))


def _build_tied(src: Path, out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig.from_pretrained(str(src))
    cfg.tie_word_embeddings = True
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():  # norms != 1 so a port that skipped a norm scale could not match
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(str(out))
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        if (src / f).is_file():
            shutil.copy(src / f, out / f)


@pytest.fixture(scope="module")
def tied_dir(fixtures_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tied_llama")
    _build_tied(fixtures_dir / "llama_tiny" / "hf", out)
    return out


@pytest.fixture(scope="module")
def tied(tied_dir):
    """(config, params, tokenizer, batch) of the tied fixture; batch is laid out job episodes."""
    config, params = hf.load_hf_dir(tied_dir)
    tok = Tokenizer.from_dir(tied_dir)
    eps = [layout_example(tok, p, r, 1.0) for p, r in TEXTS]
    batch = collate(eps, tok.pad_id, extras=True)
    return config, params, tok, batch


def _torch_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager").eval()


def _torch_logits(model, batch):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.as_tensor(batch["tokens"], dtype=torch.long),
                     attention_mask=torch.as_tensor(batch["attn_mask"], dtype=torch.long)
                     ).logits.numpy()


def _logits(config, params, batch):
    out = llama.LlamaForCausalLM(config).apply({"params": params}, jnp.asarray(batch["tokens"]),
                                               jnp.asarray(batch["attn_mask"]))
    return np.asarray(out.logits), np.asarray(out.hidden_states)


def _real(batch):
    return batch["attn_mask"] > 0  # [B, T] positions compared (right padding)


def test_tied_fixture_equals_transformers(tied, tied_dir):
    config, params, _, batch = tied
    assert config.tie_word_embeddings and "lm_head" not in params
    assert "lm_head.weight" not in hf.read_hf_state_dict(tied_dir)  # transformers saved it tied
    ref = _torch_logits(_torch_model(tied_dir), batch)
    got, h = _logits(config, params, batch)
    m = _real(batch)
    np.testing.assert_allclose(got[m], ref[m], atol=TOL, rtol=TOL)
    np.testing.assert_allclose(got, h @ np.asarray(params["embed_tokens"]["embedding"]).T,
                               atol=TOL, rtol=TOL)
    # the fixture discriminates: the same trunk with a separate random head is far off
    untied = config.replace(tie_word_embeddings=False)
    head = {"kernel": 0.02 * np.random.default_rng(0).normal(
        size=(config.hidden_size, config.vocab_size)).astype(np.float32)}
    wrong, _ = _logits(untied, {**params, "lm_head": head}, batch)
    assert np.max(np.abs(wrong[m] - ref[m])) > 100 * TOL


def test_bc_step_equals_torch_and_chunked_head(tied, tied_dir):
    """The BC loss and its gradient (embedding: input + output use) equal torch's; the chunked
    vocabulary head (W = Eᵀ, `w_axis=0`) equals the dense path."""
    import torch

    config, params, _, batch = tied
    model = llama.LlamaForCausalLM(config)
    jb = {k: jnp.asarray(v) for k, v in batch.items()}
    w, axis = V.lm_head_weights(params)
    assert axis == 0 and w is params["embed_tokens"]["embedding"]

    def run(chunk):
        f = lambda p: LM.loss_fn(model, LM.LMConfig(vocab_chunk=chunk), p, jb)[0]  # noqa: E731
        return jax.jit(jax.value_and_grad(f))(params)

    (ld, gd), (lc, gc) = run(0), run(64)
    assert _rel(lc, ld) < TOL and _tree_rel(gc, gd) < TOL

    tm = _torch_model(tied_dir)
    tokens = torch.as_tensor(batch["tokens"], dtype=torch.long)
    attn = torch.as_tensor(batch["attn_mask"])
    logits = tm(input_ids=tokens, attention_mask=attn.long()).logits
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:],
                                           reduction="none")
    w_act = torch.as_tensor(batch["response_mask"])[:, 1:] * attn[:, 1:]
    loss = (w_act * ce).sum() / attn[:, 1:].sum()  # upstream normalisation (BC default)
    loss.backward()
    assert abs(float(ld) - loss.item()) < TOL * abs(loss.item())
    g_emb = tm.model.embed_tokens.weight.grad.numpy()
    assert _rel(gd["embed_tokens"]["embedding"], g_emb) < 1e-4
    g_q = tm.model.layers[0].self_attn.q_proj.weight.grad.numpy().T
    assert _rel(gd["layers_0"]["self_attn"]["q_proj"]["kernel"], g_q) < 1e-4
    # the output use alone (what an untied head would give E) is a different gradient
    h = jnp.asarray(_logits(config, params, batch)[1])
    g_out = jax.grad(lambda e: jnp.sum(V.lm_token_ce({"embed_tokens": {"embedding": e}}, h,
                                                     jb["tokens"]) * jb["response_mask"][:, 1:])
                     / jnp.sum(jb["attn_mask"][:, 1:]))(params["embed_tokens"]["embedding"])
    assert _rel(g_out, g_emb) > 1e-2


def test_hf_export_is_tied_and_follows_the_embedding(tied, tmp_path):
    import torch

    config, params, tok, batch = tied
    # a changed embedding (as after training) must move the exported head with it
    e = np.asarray(params["embed_tokens"]["embedding"])
    params2 = {**params, "embed_tokens": {"embedding": e + 0.05 * np.random.default_rng(1)
                                          .normal(size=e.shape).astype(np.float32)}}
    out = hf.write_hf_dir(tmp_path / "export", config, params2, tokenizer=tok)
    saved = json.loads((out / "config.json").read_text())
    assert saved["tie_word_embeddings"] is True
    assert "lm_head.weight" not in hf.read_hf_state_dict(out)
    tm = _torch_model(out)
    assert tm.config.tie_word_embeddings
    assert tm.lm_head.weight.data_ptr() == tm.model.embed_tokens.weight.data_ptr()
    np.testing.assert_array_equal(tm.lm_head.weight.detach().numpy(), params2["embed_tokens"]["embedding"])
    m = _real(batch)
    ref = _torch_logits(tm, batch)
    got, _ = _logits(config, params2, batch)
    np.testing.assert_allclose(got[m], ref[m], atol=TOL, rtol=TOL)
    assert isinstance(tm.lm_head.weight, torch.nn.Parameter)
    # and it reloads into fairjax as the same tied model
    config3, params3 = hf.load_hf_dir(out)
    assert config3.tie_word_embeddings and "lm_head" not in params3


def test_scan_layers_on_tied(tied):
    config, params, _, batch = tied
    scfg = config.replace(scan_layers=True)
    sparams = layout.to_layout(params, scfg)
    assert "lm_head" not in sparams
    ref, _ = _logits(config, params, batch)
    got, _ = _logits(scfg, sparams, batch)
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=TOL)
    back = llama.params_to_hf(sparams, scfg)
    assert "lm_head.weight" not in back
    np.testing.assert_array_equal(back["model.embed_tokens.weight"], params["embed_tokens"]["embedding"])


def test_lora_on_tied_matches_peft(tied, tied_dir, tmp_path):
    """Adapters on every block projection: the factored and merged forms agree, the head stays the
    (frozen) embedding, and PEFT on the transformers tied model gives the same logits."""
    import torch
    from peft import PeftModel

    config, params, _, batch = tied
    lcfg = lora.LoraConfig(rank=4, alpha=8.0,
                           targets=r"(q|k|v|o|gate|up|down)_proj/kernel$")
    ad = lora.init(params, lcfg, "llama", jax.random.PRNGKey(0))
    assert len(ad) == 7 * config.num_layers and not any("embed" in k for k in ad)
    ad = {k: {"a": v["a"], "b": 0.1 * jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(1), i),
                                                         v["b"].shape)}
          for i, (k, v) in enumerate(sorted(ad.items()))}
    model = llama.LlamaForCausalLM(config)
    toks, mask = jnp.asarray(batch["tokens"]), jnp.asarray(batch["attn_mask"])
    fact = lora.Factored(model).apply({"params": lora.attach(params, ad, lcfg.scale)}, toks, mask)
    merged = lora.merge(params, ad, lcfg.scale)
    np.testing.assert_array_equal(merged["embed_tokens"]["embedding"], params["embed_tokens"]["embedding"])
    mo = model.apply({"params": merged}, toks, mask)
    m = _real(batch)
    np.testing.assert_allclose(np.asarray(fact.logits)[m], np.asarray(mo.logits)[m], atol=TOL, rtol=TOL)
    np.testing.assert_allclose(np.asarray(mo.logits),
                               np.asarray(mo.hidden_states) @ np.asarray(params["embed_tokens"]["embedding"]).T,
                               atol=TOL, rtol=TOL)
    base, _ = _logits(config, params, batch)
    assert np.max(np.abs(np.asarray(mo.logits)[m] - base[m])) > 1e-3  # the adapters do something
    # gradients reach the adapters through the tied head
    g = jax.grad(lambda a: jnp.sum(lora.Factored(model).apply(
        {"params": lora.attach(params, a, lcfg.scale)}, toks, mask).logits[:, -1, :7]))(ad)
    assert all(float(jnp.max(jnp.abs(v["a"]))) > 0 for v in g.values())

    lora.write_peft_dir(tmp_path / "peft", ad, lcfg, "llama", str(tied_dir))
    pm = PeftModel.from_pretrained(_torch_model(tied_dir), str(tmp_path / "peft")).eval()
    with torch.no_grad():
        ref = pm(input_ids=torch.as_tensor(batch["tokens"], dtype=torch.long),
                 attention_mask=torch.as_tensor(batch["attn_mask"], dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(np.asarray(mo.logits)[m], ref[m], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_ilql_heads_on_tied(tied):
    """ILQL on a tied trunk: the policy logits come through the embedding (equal the model's),
    the Q/V heads read the hidden states, and the chunked loss equals the dense one."""
    config, params, tok, batch = tied
    model = llama.LlamaForCausalLM(config)
    hp = ILQLHparams(awac_weight=1.0, dm_weight=0.5, dm_margin=0.1, cql_temp=0.8, beta=1.0)
    cfg = I.ILQLConfig(hparams=hp, separate_policy=True, separate_target=True)
    ip, frozen = I.init_from_hf(cfg, params, jax.random.PRNGKey(2), config.hidden_size,
                                config.vocab_size)
    jb = {k: jnp.asarray(v) for k, v in batch.items()}
    out = I.forward(model, cfg, ip, frozen, jb, target_full=True)
    ref, h = _logits(config, params, batch)
    np.testing.assert_allclose(np.asarray(out["policy_logits"]), ref, atol=TOL, rtol=TOL)
    np.testing.assert_allclose(np.asarray(V.lm_logits_from_hidden(params, jnp.asarray(h))), ref,
                               atol=TOL, rtol=TOL)
    assert out["q1_all"].shape[-1] == config.vocab_size

    def loss(c):
        return jax.jit(jax.value_and_grad(lambda p: I.loss_fn(model, c, p, frozen, jb),
                                          has_aux=True))(ip)

    (ld, md), gd = loss(dataclasses.replace(cfg, vocab_chunk=0))
    (lc, mc), gc = loss(dataclasses.replace(cfg, vocab_chunk=64))
    for k in ("loss", "q_loss", "v_loss", "cql_loss", "dm_loss", "token_loss"):
        assert _rel(mc[k], md[k]) < TOL, k
    assert _tree_rel(gc, gd) < TOL
    assert float(jnp.max(jnp.abs(gd["policy"]["embed_tokens"]["embedding"]))) > 0


_FSDP_SCRIPT = """
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
from fairjax import parallel
from fairjax.io import hf
from fairjax.models import llama
assert jax.device_count() == 4, jax.devices()
config, params = hf.load_hf_dir({path!r})
mesh = Mesh(np.array(jax.devices()).reshape(1, 2, 2), ("data", "fsdp", "tensor"))
specs = parallel.param_specs(params, config.partition_rules(), mesh)
model = llama.LlamaForCausalLM(config)
ids = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (2, 11)), jnp.int32)
def loss(p):
    return jnp.mean(jax.nn.log_softmax(model.apply({{"params": p}}, ids).logits)[..., 3])
ref_l, ref_g = jax.jit(jax.value_and_grad(loss))(params)
sharded = jax.device_put(params, parallel.named_shardings(mesh, specs))
l, g = jax.jit(jax.value_and_grad(loss))(sharded)
rel = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / float(np.max(np.abs(np.asarray(b)))))
          for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref_g)))
emb = sharded["embed_tokens"]["embedding"].sharding.spec
print("RESULT" + json.dumps({{"spec": str(specs["embed_tokens"]["embedding"]), "emb": str(emb),
      "loss": abs(float(l) - float(ref_l)), "grad": rel, "keys": sorted(params)}}))
"""


def test_fsdp_partition_rules_on_tied(tied_dir):
    """The tied model's params all match a rule (there is no lm_head to match), the embedding is
    sharded vocab over 'tensor' and d over 'fsdp', and a sharded step equals the unsharded one."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _FSDP_SCRIPT.format(path=str(tied_dir))],
                          env=env, capture_output=True, text=True, timeout=300, cwd=HERE.parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1][6:])
    assert "lm_head" not in res["keys"]
    assert res["spec"] == res["emb"] == str(jax.sharding.PartitionSpec("tensor", "fsdp"))
    assert res["loss"] < 1e-6 and res["grad"] < 1e-5, res
