"""Generation throughput: `python -m fairjax.bench generate --algo=ilql --size=small`.

New tokens/s of `fairjax.generate.generate` for B prompts x N new tokens (default 16 x 128,
prompts of 64 tokens) on random weights of a GPT-2 preset: `--algo=bc` decodes with the policy
alone; `--algo=ilql` with the three trunks (policy, Q/V, target) + V and two target-Q heads and
the β(min Q̂ − V) perturbation. No row stops early (no stop token), so every run makes B x N tokens.
Compile time is reported separately. With torch importable, a plain Hugging Face PyTorch loop
with `past_key_values` doing the same work (three GPT2LMHeadModel trunks + MLP heads for ILQL,
top-level sampling with torch.multinomial) is timed for comparison. `--algo=ilql
--upstream_src=DIR` also times upstream ILQL's own `IQL_Policy.sample_raw` from a local checkout
(`benchmarks/upstream_ilql.py`) on the same shapes, in the same process.

`--model=llama --size=smollm2-135m --algo=bc` (SmolLM2-135M's shapes, random weights) compares
with Hugging Face's own `model.generate` (KV cache, sampling, `min_new_tokens` = N so no row
stops); `--lora` decodes a LoRA policy (rank 16 on q/v): fairjax merges the adapters into the
base once (`models.lora.merge`, timed with the decoding) as its generation path does, the torch
side runs the peft model's `generate` as peft leaves it (adapters unmerged).
"""
from __future__ import annotations

import json
import time

import jax
import numpy as np

from fairjax.agents.ilql import init_heads
from fairjax.benchmarks import upstream_ilql
from fairjax.benchmarks.forward import make_config
from fairjax.benchmarks.train import PeakRSS, _mem, peak_memory
from fairjax.generate import GenerationConfig, Policy, generate
from fairjax.models import build_model, model_module
from fairjax.models import lora as L

PROMPT_LEN = 64


def _ilql_heads(rng, d: int, vocab: int):
    heads = init_heads(rng, d, vocab, double_q=True)
    return {"v": heads["v"], "target": {"q1": heads["q1"], "q2": heads["q2"]}}


def _lora_adapters(params, kind: str, rng):
    cfg = L.LoraConfig(rank=16, alpha=32.0)
    return L.init(params, cfg, kind, rng), cfg.scale


def fairjax_generate(algo: str, mcfg, batch: int, new: int, steps: int, adv_weight: float,
                     lora: bool = False) -> dict:
    init_params = model_module(mcfg.kind).init_params
    rss = PeakRSS().__enter__()
    model = build_model(mcfg)
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    base = init_params(mcfg, keys[0])
    adapters = scale = None
    if lora:
        adapters, scale = _lora_adapters(base, mcfg.kind, keys[3])
        merge = jax.jit(lambda b, a: L.merge(b, a, scale))
    policy = Policy.lm(model, base)
    if algo == "ilql":
        trunks = tuple(init_params(mcfg, k) for k in keys[:3])
        policy = Policy(model, trunks, (("logits", 0), ("v", 1), ("target", 2)),
                        _ilql_heads(keys[3], mcfg.hidden_size, mcfg.vocab_size))
    if mcfg.dtype != "float32":  # store the weights in the compute dtype (decoding is memory-bound)
        policy = policy.cast(mcfg.dtype)
    cfg = GenerationConfig(max_new_tokens=new, adv_weight=adv_weight if algo == "ilql" else 0.0)
    ids = np.random.default_rng(0).integers(0, mcfg.vocab_size - 1, (batch, PROMPT_LEN)).astype(np.int32)
    mask = np.ones_like(ids)

    def run(k):
        pol = policy
        if lora:  # what a LoRA run's policy does before decoding: merge once
            pol = Policy.lm(model, merge(base, adapters))
        return jax.block_until_ready(generate(pol, ids, mask, jax.random.PRNGKey(k), cfg,
                                              eoa_id=-1, pad_id=mcfg.vocab_size - 1))

    t = time.perf_counter()
    out = run(0)
    compile_s = time.perf_counter() - t
    assert int(np.asarray(out.lengths).min()) == new
    t = time.perf_counter()
    for k in range(steps):
        run(k + 1)
    dt = (time.perf_counter() - t) / steps
    rss.__exit__(None, None, None)
    return peak_memory({"s_per_batch": dt, "new_tokens_per_s": batch * new / dt,
                        "compile_s": compile_s}, rss)


def hf_generate(mcfg, batch: int, new: int, steps: int, lora: bool = False):
    """Hugging Face `generate` (KV cache, sampling) on the fairjax config's HF model, its weights
    in the config's dtype; peft LoRA on q/v projections (unmerged) when `lora`."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    torch.manual_seed(0)
    with PeakRSS() as rss:
        model = transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.for_model(**mcfg.to_hf())).eval()
        if mcfg.dtype != "float32":  # the same storage and compute dtype as the fairjax side
            model = model.to(getattr(torch, mcfg.dtype))
        if lora:
            from peft import LoraConfig, get_peft_model

            targets = ["c_attn"] if mcfg.kind == "gpt2" else ["q_proj", "v_proj"]
            model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                     target_modules=targets)).eval()
        ids = torch.randint(0, mcfg.vocab_size - 7, (batch, PROMPT_LEN))
        kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=True, top_k=0, top_p=1.0,
                  pad_token_id=mcfg.vocab_size - 1, attention_mask=torch.ones_like(ids))

        @torch.no_grad()
        def run():
            out = model.generate(input_ids=ids, **kw)
            assert out.shape[1] == PROMPT_LEN + new

        run()  # warm up
        t = time.perf_counter()
        for _ in range(steps):
            run()
        dt = (time.perf_counter() - t) / steps
    out = {"s_per_batch": dt, "new_tokens_per_s": batch * new / dt}
    if rss.bytes is not None:
        out["peak_rss_growth_bytes"] = int(rss.bytes)
    return out


def torch_generate(algo: str, mcfg, batch: int, new: int, steps: int, adv_weight: float):
    try:
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    torch.manual_seed(0)
    hf = GPT2Config.from_dict(mcfg.to_hf())  # the same shape as the fairjax model
    n_trunks = 3 if algo == "ilql" else 1
    trunks = [GPT2LMHeadModel(hf).eval() for _ in range(n_trunks)]
    d, v = mcfg.hidden_size, mcfg.vocab_size
    mlp = lambda out: torch.nn.Sequential(torch.nn.Linear(d, 2 * d), torch.nn.ReLU(),
                                          torch.nn.Linear(2 * d, out)).eval()
    v_head, q1, q2 = mlp(1), mlp(v), mlp(v)
    if mcfg.dtype != "float32":  # the same storage and compute dtype as the fairjax side
        dt = getattr(torch, mcfg.dtype)
        trunks = [m.to(dt) for m in trunks]
        v_head, q1, q2 = v_head.to(dt), q1.to(dt), q2.to(dt)
    ids = torch.randint(0, v - 1, (batch, PROMPT_LEN))

    @torch.no_grad()
    def run():
        past = [None] * n_trunks
        x = ids
        for _ in range(new):
            outs = [m(input_ids=x, past_key_values=p, use_cache=True, output_hidden_states=True)
                    for m, p in zip(trunks, past)]
            past = [o.past_key_values for o in outs]
            logits = outs[0].logits[:, -1]
            if algo == "ilql":
                hv, ht = outs[1].hidden_states[-1][:, -1], outs[2].hidden_states[-1][:, -1]
                logits = logits + adv_weight * (torch.minimum(q1(ht), q2(ht)) - v_head(hv))
            x = torch.multinomial(torch.softmax(logits, -1), 1)

    run()  # warm up
    t = time.perf_counter()
    for _ in range(steps):
        run()
    dt = (time.perf_counter() - t) / steps
    return {"s_per_batch": dt, "new_tokens_per_s": batch * new / dt}


def run(FLAGS) -> None:
    if FLAGS.model not in ("gpt2", "llama"):
        raise SystemExit("benchmarks/generate: --model=gpt2 | llama")
    if FLAGS.algo not in ("bc", "ilql"):
        raise SystemExit(f"--algo={FLAGS.algo}: generate benchmarks bc | ilql")
    lora = bool(getattr(FLAGS, "lora", False))
    if FLAGS.algo == "ilql" and (FLAGS.model != "gpt2" or lora):
        raise SystemExit("benchmarks/generate: --algo=ilql is wired for full GPT-2 only")
    upstream = getattr(FLAGS, "upstream_src", None)
    if upstream:
        if FLAGS.algo != "ilql":
            raise SystemExit("benchmarks/generate: --upstream_src times upstream ILQL (--algo=ilql)")
        upstream_ilql.load(upstream)  # fail before the fairjax run, not after it
    batch, new, steps = FLAGS.batch or 16, FLAGS.seq or 128, FLAGS.steps or 2
    mcfg = make_config(FLAGS.model, FLAGS.size, FLAGS.dtype, getattr(FLAGS, "attention", "xla"))
    mcfg = mcfg.replace(vocab_size=mcfg.vocab_size + 6,  # the six layout tokens
                        max_positions=max(mcfg.max_positions, PROMPT_LEN + new))
    adv_weight = 8.0
    res = {"algo": FLAGS.algo, "model": FLAGS.model, "size": FLAGS.size, "lora": lora,
           "batch": batch, "new_tokens": new, "prompt_tokens": PROMPT_LEN, "dtype": mcfg.dtype,
           "device": jax.devices()[0].device_kind}
    res["fairjax"] = fairjax_generate(FLAGS.algo, mcfg, batch, new, steps, adv_weight, lora)
    hf_api = FLAGS.model != "gpt2" or lora  # HF `generate` (a hand loop for GPT-2 / ILQL)
    if FLAGS.torch:
        tsteps = max(1, steps // 2)
        res["torch"] = (hf_generate(mcfg, batch, new, tsteps, lora) if hf_api else
                        torch_generate(FLAGS.algo, mcfg, batch, new, tsteps, adv_weight))
    if upstream:
        res["upstream"] = upstream_ilql.upstream_generate(upstream, mcfg, batch, PROMPT_LEN, new,
                                                          max(1, steps // 2), adv_weight)
    f = res["fairjax"]
    print(f"generate {FLAGS.algo}{' LoRA r16' if lora else ''} {FLAGS.model}-{FLAGS.size} batch "
          f"{batch} x {new} new tokens (prompt {PROMPT_LEN}) {mcfg.dtype} on {res['device']}")
    print(f"  fairjax: {f['new_tokens_per_s']:.1f} new tok/s ({f['s_per_batch']:.2f} s/batch, "
          f"compile {f['compile_s']:.1f} s){_mem(f)}")
    if res.get("torch"):
        t = res["torch"]
        what = (("peft " if lora else "") + "HF generate") if hf_api else \
            "torch HF loop (past_key_values)"
        print(f"  {what}: {t['new_tokens_per_s']:.1f} new tok/s ({t['s_per_batch']:.2f} s/batch)"
              f"{_mem(t)}")
        goal = "goal >= 2x HF generate" if hf_api else "goal >= 3x the torch loop on CPU"
        print(f"  speed-up fairjax / torch = {f['new_tokens_per_s'] / t['new_tokens_per_s']:.2f}x "
              f"({goal})")
    if res.get("upstream"):
        u = res["upstream"]
        print(f"  upstream ILQL IQL_Policy.sample_raw: {u['new_tokens_per_s']:.1f} new tok/s "
              f"({u['s_per_batch']:.2f} s/batch)")
        print(f"  speed-up fairjax / upstream = "
              f"{f['new_tokens_per_s'] / u['new_tokens_per_s']:.2f}x (goal >= 5x on CPU)")
    if FLAGS.json:
        with open(FLAGS.json, "w") as fh:
            json.dump(res, fh, indent=2)
