"""Forward-pass throughput: `python -m fairjax.bench forward --model=gpt2 --size=small`.

Times the jit-compiled Flax LM forward (logits included) of a randomly initialised model of a
size preset (default batch 8 x 128 tokens), warm-up excluded, `block_until_ready` on every call.
If torch is importable (and --torch), times Hugging Face's PyTorch model of the same shapes in the
same run (random init, eval mode, `torch.no_grad`) and prints JAX / PyTorch as a ratio.
"""
from __future__ import annotations

import importlib.util
import json
import time
from typing import Any, Callable

import jax
import numpy as np

from fairjax.models import gpt2, llama

FAMILIES = {"gpt2": (gpt2, gpt2.GPT2LMHeadModel), "llama": (llama, llama.LlamaForCausalLM)}
DEFAULT_BATCH, DEFAULT_SEQ, DEFAULT_STEPS, WARMUP = 8, 128, 10, 2


# Shapes of real pretrained models (random weights: speed does not depend on their values).
# smollm2-135m = SmolLM2-135M-Instruct, the `smollm2-135m-instruct` preset (fairjax.io.presets).
PRETRAINED_SHAPES = {
    "llama": {"smollm2-135m": llama.LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
        num_kv_heads=3, max_positions=8192, rope_theta=1e5, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2)},
}


def make_config(family: str, size: str, dtype: str | None, attention: str = "xla"):
    """Preset config of `family`/`size` with the benchmark's compute dtype."""
    if family not in FAMILIES:
        raise ValueError(f"--model={family!r}; expected one of {sorted(FAMILIES)}")
    presets = {**FAMILIES[family][0].PRESETS, **PRETRAINED_SHAPES.get(family, {})}
    if size not in presets:
        raise ValueError(f"--size={size!r} for {family}; expected one of {sorted(presets)}")
    if dtype is None:
        dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    return presets[size].replace(dtype=dtype, attention_impl=attention)


def time_calls(fn: Callable[[], Any], steps: int, warmup: int = WARMUP) -> float:
    """Seconds per call of `fn` (which must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def jax_forward_seconds(config, batch: int, seq: int, steps: int) -> tuple[float, int]:
    """(seconds per forward, number of params) for the Flax model."""
    model_cls = FAMILIES[config.kind][1]
    params = FAMILIES[config.kind][0].init_params(config, jax.random.PRNGKey(0))
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
    ids = jax.random.randint(jax.random.PRNGKey(1), (batch, seq), 0, config.vocab_size)  # [B, T]
    forward = jax.jit(lambda p, x: model_cls(config).apply({"params": p}, x).logits)
    return time_calls(lambda: forward(params, ids).block_until_ready(), steps), n_params


def torch_forward_seconds(config, batch: int, seq: int, steps: int) -> tuple[float, str]:
    """(seconds per forward, device) of the HF PyTorch model with the same shapes (random init)."""
    import torch
    import transformers

    hf_config = transformers.AutoConfig.for_model(**config.to_hf())
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
    if config.dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    # same kind of device as JAX uses, so the ratio compares like with like
    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    model = model.to(device)
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)

    def call():
        with torch.no_grad():
            model(input_ids=ids).logits.float().sum().item()  # .item() waits for the result

    return time_calls(call, steps), device


def run(FLAGS) -> dict:
    config = make_config(FLAGS.model, FLAGS.size, FLAGS.dtype, getattr(FLAGS, "attention", "xla"))
    batch, seq = FLAGS.batch or DEFAULT_BATCH, FLAGS.seq or DEFAULT_SEQ
    steps = FLAGS.steps or DEFAULT_STEPS
    if seq > config.max_positions:
        raise ValueError(f"--seq={seq} exceeds the preset's max_positions={config.max_positions}")
    tokens = batch * seq
    jax_s, n_params = jax_forward_seconds(config, batch, seq, steps)
    result = {"target": "forward", "model": FLAGS.model, "size": FLAGS.size, "dtype": config.dtype,
              "batch": batch, "seq": seq, "steps": steps, "params": n_params,
              "backend": jax.default_backend(), "jax_tokens_per_s": tokens / jax_s,
              "jax_ms_per_batch": 1e3 * jax_s}
    if FLAGS.torch and importlib.util.find_spec("torch") is not None:
        import torch

        torch_s, device = torch_forward_seconds(config, batch, seq, steps)
        result.update({"torch_tokens_per_s": tokens / torch_s, "torch_ms_per_batch": 1e3 * torch_s,
                       "torch_threads": torch.get_num_threads(),
                       "torch_device": device,
                       "ratio_jax_over_torch": torch_s / jax_s})
    rows = [("framework", "tokens/s", "ms/batch"),
            ("jax/flax", f"{result['jax_tokens_per_s']:.0f}", f"{result['jax_ms_per_batch']:.1f}")]
    if "torch_tokens_per_s" in result:
        rows.append(("pytorch (HF)", f"{result['torch_tokens_per_s']:.0f}",
                     f"{result['torch_ms_per_batch']:.1f}"))
    print(f"forward | {FLAGS.model}-{FLAGS.size} ({n_params / 1e6:.1f}M params) | batch {batch} x {seq} | "
          f"{config.dtype} | {jax.default_backend()}")
    for row in rows:
        print(f"  {row[0]:<14}{row[1]:>12}{row[2]:>12}")
    if "ratio_jax_over_torch" in result:
        print(f"  ratio jax/torch: {result['ratio_jax_over_torch']:.2f}x")
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(result, f, indent=2)
    return result
