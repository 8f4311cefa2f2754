"""Train-step throughput: `python -m fairjax.bench train --algo=ilql --size=small`.

Times the compiled fairjax train step (the loop's own `compile_train_step`: scan over one
micro-batch, AdamW, Polyak update), once per `mesh.impl` (gspmd and shard_map, data-parallel over
all devices), on random weights of a GPT-2 (or, --model=llama, LLaMA) preset with a synthetic batch in
the ILQL layout (prompt = first half, response = second half; B x T = 8 x 128 by default), and,
when torch is importable, a plain Hugging Face PyTorch LM step (AdamW) on the same shapes (the
same family: GPT2LMHeadModel / LlamaForCausalLM from the fairjax config's HF dict).

Pretrained shapes: `--model=llama --size=smollm2-135m` (SmolLM2-135M, tied embeddings; random
weights of that shape) with `--algo=bc`; `--lora` times LoRA (rank 16, alpha 32, LLaMA q/v
projections, frozen float32 base on the CPU) beside peft's LoRA on the torch model. Peak memory:
the device's `peak_bytes_in_use` where it reports one (GPU/TPU); on the CPU the growth of the
process's peak resident set (`VmHWM`, reset through /proc/self/clear_refs before each side) while
that side builds its model and runs its steps.

On the CPU, `--profile` also prints the compiled step's FLOPs, bytes accessed and peak
temporaries per op category (benchmarks/breakdown.py).

FLOPs: from XLA's cost analysis of the compiled step (`compiled.cost_analysis()["flops"]`), which
counts what actually runs (3 trunks, vocabulary-sized Q heads, CQL log-sum-exp); MFU = FLOPs /
step time / peak FLOP/s of the device (H100 SXM bf16 dense 989 TFLOP/s, H200 the same, A100 312;
unknown devices print no MFU). The 6*N*tokens rule for the LM step is printed beside it.
"""
from __future__ import annotations

import json
import time

import jax
import numpy as np

from fairjax import parallel
from fairjax.agents.registry import build_algorithm
from fairjax.benchmarks import algorithm_cfg as _algorithm_cfg, breakdown, profile
from fairjax.benchmarks.forward import FAMILIES, PRETRAINED_SHAPES, make_config
from fairjax.models.gpt2 import PRESETS
from fairjax.models.lora import cast_base
from fairjax.optim import OptimConfig, make_optimizer
from fairjax.train.loop import StatePlan, compile_train_step, stack_micro
from fairjax.typed_config import typed_block

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12, "TPU v5": 459e12}


def synthetic_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict:
    """Layout-contract batch: states = response positions + final, reward on the last action."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab - 6, size=(batch, seq)).astype(np.int32)
    start = seq // 2
    s_idx = np.arange(start, seq, dtype=np.int32)
    S = len(s_idx)
    rewards = np.zeros((batch, S - 1), np.float32)
    rewards[:, -1] = rng.normal(size=batch)
    terminals = np.zeros((batch, S), np.int32)
    terminals[:, -1] = 1
    return {"tokens": tokens, "attn_mask": np.ones((batch, seq), np.float32),
            "state_idxs": np.tile(s_idx, (batch, 1)), "action_idxs": np.tile(s_idx[:-1], (batch, 1)),
            "rewards": rewards, "terminals": terminals}


def _time(fn, steps: int) -> float:
    fn()  # compile / warm up
    fn()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps


def _proc_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakRSS:
    """Growth of the process's peak resident set over a section (Linux; None elsewhere)."""

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
        except OSError:
            pass
        self.base = _proc_kib("VmRSS")
        self.bytes = None
        return self

    def __exit__(self, *exc):
        hwm = _proc_kib("VmHWM")
        if hwm is not None and self.base is not None:
            self.bytes = (hwm - self.base) * 1024
        return False


def peak_memory(out: dict, rss: "PeakRSS") -> dict:
    """`out` with peak_bytes (device stats) or, on the CPU, peak_rss_growth_bytes."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["peak_bytes"] = int(stats["peak_bytes_in_use"])
    elif rss.bytes is not None:
        out["peak_rss_growth_bytes"] = int(rss.bytes)
    return out


def fairjax_step(algo: str, size: str, batch: int, seq: int, dtype: str, steps: int,
                 attention: str = "xla", profile_dir: str | None = None, family: str = "gpt2",
                 remat: str = "none", lora: str | None = None, impl: str = "gspmd",
                 lora_base: str = "bfloat16") -> dict:
    """Time the loop's compiled step of `algo` (configs/<algo>.py) on random `family/size`
    weights, on a data-parallel mesh over all devices (`impl` = config `mesh.impl`).
    lora: None = full fine-tuning; 'none' | 'int8' | 'nf4' = LoRA (rank 16, bf16 base
    stored as given; ILQL = one shared base). Returns step_s, tokens_per_s, flops (XLA cost
    analysis), params_lm and, when the backend reports it, peak_bytes (device memory stats)."""
    suffix = {None: "", "none": "_lora", "nf4": "_qlora", "int8": "_qlora8"}[lora]
    cfg = _algorithm_cfg(algo + suffix, remat)
    if lora is not None:
        cfg.lora.base_dtype = lora_base
    base = make_config(family, size, dtype, attention).replace(remat=remat)
    mcfg = base.replace(vocab_size=base.vocab_size + 6)
    mod, model_cls = FAMILIES[family]
    init = (lambda r: mod.init_params(mcfg, r)) if lora is None else (  # noqa: E731
        lambda r: cast_base(mod.init_params(mcfg, r), lora_base))
    rss = PeakRSS().__enter__()
    params = jax.jit(init)(jax.random.PRNGKey(0))
    alg = build_algorithm(cfg, model_cls(mcfg), mcfg, params)
    mesh = parallel.make_mesh(parallel.MeshConfig(data=-1, fsdp=1, tensor=1, impl=impl))
    opt = make_optimizer(typed_block(cfg.optim, OptimConfig, "optim"), 1000)
    plan = StatePlan(alg, opt, mesh, mcfg.partition_rules(), 0)
    step = compile_train_step(alg, opt, plan, impl=impl)
    state = {"s": plan.init()}
    n_params = sum(x.size for x in jax.tree.leaves(params))
    del params
    b = parallel.shard_batch(stack_micro(synthetic_batch(batch, seq, mcfg.vocab_size), 1), mesh)
    compiled = step.lower(state["s"], b).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float((cost or {}).get("flops", 0.0))

    def run():
        state["s"], m = step(state["s"], b)
        jax.block_until_ready(m["loss"])

    dt = _time(run, steps)
    rss.__exit__(None, None, None)
    out = peak_memory({"step_s": dt, "tokens_per_s": batch * seq / dt, "flops": flops,
                       "params_lm": n_params}, rss)
    if profile_dir and jax.default_backend() == "cpu":  # XLA's own split of the compiled step
        out["breakdown"] = breakdown.analyze(compiled, breakdown.vocab_dims(mcfg.vocab_size))
    if profile_dir:
        out["profile"] = profile.summarize(profile.trace(run, 3, profile_dir), 3)
    return out


def torch_step(size: str, batch: int, seq: int, steps: int, mcfg=None,
               lora: bool = False) -> dict | None:
    """A Hugging Face PyTorch LM step (AdamW) on the same shapes: GPT-2 `size` preset, or the
    model of the fairjax config `mcfg` (any family); lora: peft LoRA (rank 16, alpha 32, on
    c_attn / q_proj+v_proj as fairjax's default targets), only the adapters trained."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    if mcfg is None:
        c = PRESETS[size]
        mcfg = c.replace(vocab_size=c.vocab_size + 6)
    torch.manual_seed(0)
    with PeakRSS() as rss:
        model = transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.for_model(**mcfg.to_hf()))
        if lora:
            from peft import LoraConfig, get_peft_model

            targets = ["c_attn"] if mcfg.kind == "gpt2" else ["q_proj", "v_proj"]
            model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                     target_modules=targets))
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        x = torch.randint(0, mcfg.vocab_size - 6, (batch, seq))

        def run():
            opt.zero_grad()
            model(input_ids=x, labels=x).loss.backward()
            opt.step()

        dt = _time(run, steps)
    out = {"step_s": dt, "tokens_per_s": batch * seq / dt}
    if rss.bytes is not None:
        out["peak_rss_growth_bytes"] = int(rss.bytes)
    return out


def run(FLAGS) -> None:
    batch, seq = FLAGS.batch or 8, FLAGS.seq or 128
    steps = FLAGS.steps or 3
    on_cpu = jax.default_backend() == "cpu"
    dtype = FLAGS.dtype or ("float32" if on_cpu else "bfloat16")
    lora = "none" if getattr(FLAGS, "lora", False) else None
    lora_base = "float32" if on_cpu else "bfloat16"
    pretrained = FLAGS.size in PRETRAINED_SHAPES.get(FLAGS.model, {})
    res = {"algo": FLAGS.algo, "size": FLAGS.size, "model": FLAGS.model, "batch": batch,
           "seq": seq, "dtype": dtype, "device": jax.devices()[0].device_kind,
           "lora": bool(lora)}
    res["attention"] = getattr(FLAGS, "attention", "xla")
    res["devices"] = jax.device_count()
    res["fairjax"] = fairjax_step(FLAGS.algo, FLAGS.size, batch, seq, dtype, steps, res["attention"],
                                  getattr(FLAGS, "profile", None), family=FLAGS.model, lora=lora,
                                  lora_base=lora_base)
    impls = [("fairjax", "gspmd")]
    if not pretrained:  # the pretrained shapes time the default implementation only
        res["fairjax_shard_map"] = fairjax_step(FLAGS.algo, FLAGS.size, batch, seq, dtype, steps,
                                                res["attention"], impl="shard_map",
                                                family=FLAGS.model, lora=lora, lora_base=lora_base)
        impls.insert(0, ("fairjax_shard_map", "shard_map"))
    peak = next((v for k, v in PEAK_BF16.items() if k in res["device"]), None)
    for key, _ in impls:
        if peak and not on_cpu and res[key]["flops"]:
            res[key]["mfu"] = res[key]["flops"] / res[key]["step_s"] / peak
    if FLAGS.torch:
        mcfg = None
        if FLAGS.model != "gpt2" or lora or pretrained:
            base = make_config(FLAGS.model, FLAGS.size, dtype)
            mcfg = base.replace(vocab_size=base.vocab_size + 6)
        res["torch_lm"] = torch_step(FLAGS.size, batch, seq, steps, mcfg=mcfg, lora=bool(lora))
    what = "LoRA r16 " if lora else ""
    print(f"{what}{FLAGS.algo} {FLAGS.model}-{FLAGS.size} {batch}x{seq} {dtype} "
          f"attention={res['attention']} on {res['device']}")
    for key, impl in impls:
        f = res[key]
        print(f"  fairjax {FLAGS.algo} mesh.impl={impl} ({res['devices']} devices): "
              f"{f['step_s']*1e3:.1f} ms/step  {f['tokens_per_s']:.0f} tok/s  "
              f"{f['flops']/1e12:.2f} TFLOP/step" + (f"  MFU {f['mfu']:.1%}" if "mfu" in f else "")
              + _mem(f))
    if "breakdown" in f:
        breakdown.print_breakdown(f"compiled {FLAGS.algo} step by category", f["breakdown"])
    if "profile" in f:
        profile.print_summary(f["profile"])
    if res.get("torch_lm"):
        t = res["torch_lm"]
        label = ("peft LoRA " if lora else "") + ("GPT-2" if FLAGS.model == "gpt2" else FLAGS.model)
        print(f"  torch {label} LM step: {t['step_s']*1e3:.1f} ms/step  "
              f"{t['tokens_per_s']:.0f} tok/s" + _mem(t))
        if FLAGS.algo == "bc":
            print(f"  speed-up fairjax / torch = {t['step_s']/f['step_s']:.2f}x (goal >= 1.3x)")
        else:
            print(f"  ratio fairjax {FLAGS.algo} / torch LM = {f['step_s']/t['step_s']:.2f} "
                  "(goal <= 1.7 on CPU)")
    if FLAGS.json:
        with open(FLAGS.json, "w") as fh:
            json.dump(res, fh, indent=2)


def _mem(r: dict) -> str:
    if "peak_bytes" in r:
        return f"  peak {r['peak_bytes']/2**30:.2f} GiB"
    if "peak_rss_growth_bytes" in r:
        return f"  peak RSS +{r['peak_rss_growth_bytes']/2**30:.2f} GiB"
    return ""
