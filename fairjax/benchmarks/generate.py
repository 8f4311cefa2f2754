"""Generation throughput: `python -m fairjax.bench generate --algo=ilql --size=small`.

New tokens/s of `fairjax.generate.generate` for B prompts x N new tokens (default 16 x 128,
prompts of 64 tokens) on random weights of a GPT-2 preset: `--algo=bc` decodes with the policy
alone; `--algo=ilql` with the three trunks (policy, Q/V, target) + V and two target-Q heads and
the β(min Q̂ − V) perturbation. No row stops early (no stop token), so every run makes B x N tokens.
Compile time is reported separately. With torch importable, a plain Hugging Face PyTorch loop
with `past_key_values` doing the same work (three GPT2LMHeadModel trunks + MLP heads for ILQL,
top-level sampling with torch.multinomial) is timed for comparison.
"""
from __future__ import annotations

import json
import time

import jax
import numpy as np

PROMPT_LEN = 64


def _ilql_heads(rng, d: int, vocab: int):
    from fairjax.agents.ilql import init_heads

    heads = init_heads(rng, d, vocab, double_q=True)
    return {"v": heads["v"], "target": {"q1": heads["q1"], "q2": heads["q2"]}}


def fairjax_generate(algo: str, mcfg, batch: int, new: int, steps: int, adv_weight: float) -> dict:
    from fairjax.generate import GenerationConfig, Policy, generate
    from fairjax.models import build_model
    from fairjax.models.gpt2 import init_params

    model = build_model(mcfg)
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    policy = Policy.lm(model, init_params(mcfg, keys[0]))
    if algo == "ilql":
        trunks = tuple(init_params(mcfg, k) for k in keys[:3])
        policy = Policy(model, trunks, (("logits", 0), ("v", 1), ("target", 2)),
                        _ilql_heads(keys[3], mcfg.hidden_size, mcfg.vocab_size))
    if mcfg.dtype != "float32":  # store the weights in the compute dtype (decoding is memory-bound)
        policy = policy.cast(mcfg.dtype)
    cfg = GenerationConfig(max_new_tokens=new, adv_weight=adv_weight if algo == "ilql" else 0.0)
    ids = np.random.default_rng(0).integers(0, mcfg.vocab_size - 1, (batch, PROMPT_LEN)).astype(np.int32)
    mask = np.ones_like(ids)
    run = lambda k: jax.block_until_ready(
        generate(policy, ids, mask, jax.random.PRNGKey(k), cfg, eoa_id=-1, pad_id=mcfg.vocab_size - 1))
    t = time.perf_counter()
    out = run(0)
    compile_s = time.perf_counter() - t
    assert int(np.asarray(out.lengths).min()) == new
    t = time.perf_counter()
    for k in range(steps):
        run(k + 1)
    dt = (time.perf_counter() - t) / steps
    return {"s_per_batch": dt, "new_tokens_per_s": batch * new / dt, "compile_s": compile_s}


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
    from fairjax.benchmarks.forward import make_config

    if FLAGS.model != "gpt2":
        raise SystemExit("benchmarks/generate: only --model=gpt2 is wired")
    if FLAGS.algo not in ("bc", "ilql"):
        raise SystemExit(f"--algo={FLAGS.algo}: generate benchmarks bc | ilql")
    batch, new, steps = FLAGS.batch or 16, FLAGS.seq or 128, FLAGS.steps or 2
    mcfg = make_config("gpt2", FLAGS.size, FLAGS.dtype, getattr(FLAGS, "attention", "xla"))
    mcfg = mcfg.replace(vocab_size=mcfg.vocab_size + 6,  # the six layout tokens
                        max_positions=max(mcfg.max_positions, PROMPT_LEN + new))
    adv_weight = 8.0
    res = {"algo": FLAGS.algo, "size": FLAGS.size, "batch": batch, "new_tokens": new,
           "prompt_tokens": PROMPT_LEN, "dtype": mcfg.dtype, "device": jax.devices()[0].device_kind}
    res["fairjax"] = fairjax_generate(FLAGS.algo, mcfg, batch, new, steps, adv_weight)
    if FLAGS.torch:
        res["torch"] = torch_generate(FLAGS.algo, mcfg, batch, new, max(1, steps // 2), adv_weight)
    f = res["fairjax"]
    print(f"generate {FLAGS.algo} gpt2-{FLAGS.size} batch {batch} x {new} new tokens "
          f"(prompt {PROMPT_LEN}) {mcfg.dtype} on {res['device']}")
    print(f"  fairjax: {f['new_tokens_per_s']:.1f} new tok/s ({f['s_per_batch']:.2f} s/batch, "
          f"compile {f['compile_s']:.1f} s)")
    if res.get("torch"):
        t = res["torch"]
        print(f"  torch HF loop (past_key_values): {t['new_tokens_per_s']:.1f} new tok/s "
              f"({t['s_per_batch']:.2f} s/batch)")
        print(f"  speed-up fairjax / torch = {f['new_tokens_per_s'] / t['new_tokens_per_s']:.2f}x "
              "(goal >= 5x on CPU)")
    if FLAGS.json:
        with open(FLAGS.json, "w") as fh:
            json.dump(res, fh, indent=2)
