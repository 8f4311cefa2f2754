"""Online RL step time: `python -m fairjax.bench rl --algo=grpo --size=tiny|small`.

One RL step = B completions (B/G prompts × G samples, no early stop: every completion has
`--seq` tokens) → host scoring with fairjax's gender-coded lexicon scorer (numpy) → advantages →
one optimizer step (AdamW), on random weights of a GPT-2 preset with the fixture tokenizer
(`$FAIRJAX_FIXTURES/gpt2_tiny/hf`, its ids decoded, the rest of a larger vocabulary dropped in the
text). fairjax's `agents.online.OnlineRL.step` reports the rollout / scoring / update split; the
same step is then timed with trl's `GRPOTrainer` (torch, transformers `generate`, same model shape,
group size, prompt and completion lengths, scorer, dtype, β = 0, one optimizer step per rollout
batch so neither side runs a separate old-log-prob forward, dropout and activation checkpointing
off, as fairjax's benchmark model) on the same machine in the
same run, and the ratio printed with the load average. The update's FLOPs come from XLA's cost
analysis; a recompilation between timed steps is an error. torch/trl are imported only in
`trl_step`.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jax
import numpy as np

from fairjax.agents.online import ALGOS, OnlineConfig, OnlineRL, PolicyParts
from fairjax.benchmarks.forward import make_config
from fairjax.losses.grpo import GRPOHParams
from fairjax.losses.ppo import PPOHParams
from fairjax.models import build_model
from fairjax.models.gpt2 import init_params
from fairjax.rewards.lexicon import GenderCodedScorer

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, per chip
PRESETS = {"tiny": dict(prompt=32, new=32, batch=8, group=4),
           "small": dict(prompt=64, new=64, batch=8, group=4)}


def _fixture_tokenizer():
    """The fixture's HF tokenizer, or None when the fixtures are absent (then completions are
    scored as words "w<id>" and trl, which needs a tokenizer, is not run)."""
    root = Path(os.environ.get("FAIRJAX_FIXTURES",
                               Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"))
    d = root / "gpt2_tiny" / "hf"
    if not (d / "tokenizer.json").is_file():
        print(f"benchmarks/rl: no tokenizer at {d} (set FAIRJAX_FIXTURES): word-id texts, no trl")
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(d))


def _prompts(hf_tok, n: int, length: int) -> list[list[int]]:
    """n prompts whose text re-tokenizes to exactly `length` ids (so both sides see the same)."""
    rng = np.random.default_rng(0)
    if hf_tok is None:
        return rng.integers(0, 990, (n, length)).tolist()
    out = []
    while len(out) < n:
        ids = rng.integers(0, 990, length + 8).tolist()
        again = hf_tok(hf_tok.decode(ids))["input_ids"][:length]
        if len(again) == length and hf_tok(hf_tok.decode(again))["input_ids"] == again:
            out.append(again)
    return out


class _DecodeOnly:
    """What OnlineRL needs from a tokenizer; eoa_id = -1: no row stops early."""

    def __init__(self, hf_tok, pad_id: int):
        self.hf, self.pad_id, self.eoa_id = hf_tok, pad_id, -1
        self.n = 0 if hf_tok is None else len(hf_tok)

    def decode(self, ids):
        if self.hf is None:
            return " ".join(f"w{i}" for i in ids)
        return self.hf.decode([i for i in ids if i < self.n])


def fairjax_step(mcfg, algo: str, prompts, hf_tok, new: int, batch: int, group: int, steps: int,
                 scorer) -> dict:
    import optax

    model = build_model(mcfg)
    cfg = OnlineConfig(algo=algo, batch_size=batch, group_size=group,
                       max_prompt_tokens=max(map(len, prompts)), max_new_tokens=new,
                       reference="none", grpo=GRPOHParams(beta=0.0), ppo=PPOHParams(beta=0.0))
    rl = OnlineRL(PolicyParts(model), cfg, _DecodeOnly(hf_tok, mcfg.vocab_size - 1), scorer,
                  optax.adamw(1e-6))
    state = rl.init_state(init_params(mcfg, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
    p = len(prompts) // cfg.prompts_per_step
    per = [prompts[(k % p) * cfg.prompts_per_step:(k % p + 1) * cfg.prompts_per_step]
           for k in range(steps + 1)]
    t = time.perf_counter()
    state, m, _ = rl.step(state, [np.asarray(x) for x in per[0]])  # compiles
    compile_s = time.perf_counter() - t
    caches = (rl._update._cache_size(), rl._stats._cache_size())
    rows = []
    for k in range(steps):
        t = time.perf_counter()
        state, m, _ = rl.step(state, [np.asarray(x) for x in per[k + 1]])
        rows.append({"total": time.perf_counter() - t, "rollout": m["time/rollout"],
                     "scoring": m["time/scoring"], "update": m["time/update"],
                     "update_tokens_per_s": m["update_tokens_per_s"]})
        assert m["completion_length"] == new
    if (rl._update._cache_size(), rl._stats._cache_size()) != caches:
        raise RuntimeError("benchmarks/rl: the update or rollout-stats jit recompiled between steps")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
    update_flops = _update_flops(rl, state, cfg, batch, new)
    return {"params": n_params, "update_tflops_per_s": update_flops / mean["update"] / 1e12,
            "update_xla_gflops": update_flops / 1e9,
            "update_tokens_per_s": mean["update_tokens_per_s"],
            "s_per_step": mean["total"], "split_s": {k: mean[k] for k in ("rollout", "scoring",
                                                                          "update")},
            "tokens_per_s": batch * new / mean["total"],
            "rollout_tokens_per_s": batch * new / mean["rollout"], "compile_s": compile_s}


def _update_flops(rl, state, cfg, batch: int, new: int) -> float:
    """FLOPs of one compiled update (XLA's cost analysis of `OnlineRL._update`, the loop's
    compiled step, on a rollout-shaped batch): forward + backward of the trunk over prompt +
    completion, the LM head on the completion positions only, AdamW."""
    width = cfg.max_prompt_tokens + new
    mb = {"seq": np.zeros((batch, width), np.int32), "attn": np.ones((batch, width), np.float32),
          "mask": np.ones((batch, new), np.float32), "advantages": np.ones((batch,), np.float32),
          "pad_id": np.zeros((batch,), np.int32)}
    cost = rl._update.lower(state, rl.device_batch(mb)).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", 0.0))


def trl_step(mcfg, prompts, hf_tok, new: int, batch: int, group: int, steps: int, scorer):
    """The same GRPO step with trl's GRPOTrainer (None when trl/torch are not installed)."""
    try:
        import torch
        from datasets import Dataset
        from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except ImportError:
        return None
    import tempfile

    torch.manual_seed(0)
    hf = GPT2Config.from_dict(mcfg.to_hf())  # the same shape as the fairjax model
    model = GPT2LMHeadModel(hf)
    if hf_tok.pad_token is None:
        hf_tok.pad_token = hf_tok.eos_token
    texts = [hf_tok.decode(p) for p in prompts]
    per_step = batch // group
    ds = Dataset.from_dict({"prompt": [texts[(k * per_step + j) % len(texts)]
                                       for k in range(steps + 1) for j in range(per_step)]})
    stamps = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    def reward(completions, **kw):
        return [float(x) for x in scorer.score_texts(completions)]

    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(output_dir=out, per_device_train_batch_size=batch, num_generations=group,
                          max_completion_length=new, max_steps=steps + 1, learning_rate=1e-6,
                          beta=0.0, num_iterations=1, steps_per_generation=1,
                          gradient_accumulation_steps=1, disable_dropout=True,
                          gradient_checkpointing=False, use_cpu=True, report_to=[], logging_steps=10_000,
                          save_strategy="no", bf16=False, seed=0, dataloader_num_workers=0,
                          generation_kwargs={"min_new_tokens": new}, shuffle_dataset=False)
        tr = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=ds,
                         processing_class=hf_tok, callbacks=[Stamp()])
        start = time.perf_counter()
        tr.train()
    steps_s = np.diff([start] + stamps)
    dt = float(np.mean(steps_s[1:]))  # the first step warms up
    return {"s_per_step": dt, "tokens_per_s": batch * new / dt, "first_step_s": float(steps_s[0])}


def run(FLAGS) -> None:
    if FLAGS.algo not in ALGOS:
        raise SystemExit(f"--algo={FLAGS.algo}: the rl benchmark runs one of {ALGOS}")
    if FLAGS.model != "gpt2":
        raise SystemExit("benchmarks/rl: only --model=gpt2 is wired")
    pre = PRESETS.get(FLAGS.size, PRESETS["small"])
    new, batch, steps = FLAGS.seq or pre["new"], FLAGS.batch or pre["batch"], FLAGS.steps or 3
    group = pre["group"]
    hf_tok = _fixture_tokenizer()
    mcfg = make_config("gpt2", FLAGS.size, FLAGS.dtype, getattr(FLAGS, "attention", "xla"))
    mcfg = mcfg.replace(vocab_size=max(mcfg.vocab_size, len(hf_tok or ())),
                        max_positions=max(mcfg.max_positions, pre["prompt"] + new))
    prompts = _prompts(hf_tok, 2 * batch // group, pre["prompt"])
    scorer = GenderCodedScorer("difference")
    res = {"algo": FLAGS.algo, "size": FLAGS.size, "completions": batch, "group_size": group,
           "prompt_tokens": pre["prompt"], "new_tokens": new, "dtype": mcfg.dtype,
           "device": jax.devices()[0].device_kind, "steps": steps}
    res["loadavg_before"] = os.getloadavg()
    res["fairjax"] = fairjax_step(mcfg, FLAGS.algo, prompts, hf_tok, new, batch, group, steps,
                                  scorer)
    if FLAGS.torch and FLAGS.algo == "grpo" and hf_tok is not None:
        res["trl"] = trl_step(mcfg, prompts, hf_tok, new, batch, group, steps, scorer)
    res["loadavg_after"] = os.getloadavg()
    f = res["fairjax"]
    print(f"rl {FLAGS.algo} gpt2-{FLAGS.size}: {batch} completions ({batch // group} prompts x G="
          f"{group}), prompt {pre['prompt']} + {new} new tokens, {mcfg.dtype} on {res['device']}")
    print(f"  like for like: both {mcfg.dtype}, beta=0 (no reference forward), 1 optimizer step "
          f"per rollout batch (trl num_iterations=1, steps_per_generation=1: old log-probs = "
          f"detached current, no extra forward), LM head on the completion positions only, "
          f"dropout off, no activation checkpointing (trl's GRPOConfig default is on), AdamW, "
          f"every completion {new} tokens; load average "
          f"{res['loadavg_before'][0]:.1f} before, {res['loadavg_after'][0]:.1f} after "
          f"({os.cpu_count()} CPUs)")
    sp = f["split_s"]
    print(f"  fairjax: {f['s_per_step']:.3f} s/step (rollout {sp['rollout']:.3f}, scoring "
          f"{sp['scoring']:.3f}, update {sp['update']:.3f}), {f['tokens_per_s']:.1f} tok/s, "
          f"rollout {f['rollout_tokens_per_s']:.1f} tok/s, compile {f['compile_s']:.1f} s")
    print(f"  fairjax update: {f['update_xla_gflops']:.1f} GFLOP (XLA cost analysis), "
          f"{1e3 * f['update_tflops_per_s']:.1f} GFLOP/s, {f['update_tokens_per_s']:.1f} trained "
          f"tok/s; no recompilation between steps")
    if res.get("trl"):
        t = res["trl"]
        res["speedup_vs_trl"] = t["s_per_step"] / f["s_per_step"]
        print(f"  trl GRPOTrainer: {t['s_per_step']:.3f} s/step, {t['tokens_per_s']:.1f} tok/s")
        print(f"  speed-up fairjax / trl = {res['speedup_vs_trl']:.2f}x per step (goal >= 3x on CPU)")
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in res["device"]), None)
    if peak:
        res["update_mfu"] = f["update_tflops_per_s"] / peak
        print(f"  update: {f['update_tflops_per_s']:.1f} TFLOP/s = {100 * res['update_mfu']:.1f}% "
              f"MFU of {peak:.0f} dense bf16 TFLOP/s (XLA-counted FLOPs)")
    if FLAGS.json:
        with open(FLAGS.json, "w") as fh:
            json.dump(res, fh, indent=2)
