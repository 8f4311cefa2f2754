"""Train-step device memory: `python -m fairjax.bench memory --model=llama --size=7b --algo=ilql`.

Compiles the trainer's step for abstract shapes only (`jax.ShapeDtypeStruct` everywhere: no
weights are materialised, so 7B shapes work on a laptop) and reads XLA's
`compiled.memory_analysis()`: arguments (params + optimizer state + frozen copies + batch),
temporaries (activations, gradients) and outputs minus donated aliases. `<algo>_lora` rows use LoRA
(rank 16 on the family's default projections, bfloat16 frozen base; ILQL = one shared base with
policy/Q-V/target adapter sets); `<algo>_qlora` the same with the block kernels of the frozen base
stored in nf4 through qwix (`<algo>_qlora8`: int8). The estimate of the peak is arguments + temporaries + outputs − aliases, for one device holding the whole state (divide the
state by the FSDP degree for sharded runs). With `--algo=all` it tabulates BC, ILQL (three trunks)
and A-LoL (policy + frozen reference). The measured peak of the current device
(`device.memory_stats()["peak_bytes_in_use"]`) is printed when the backend reports it.
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp

from fairjax.agents.registry import build_algorithm
from fairjax.benchmarks import QUANT_SUFFIX, algorithm_cfg as _algorithm_cfg  # noqa: F401
from fairjax.benchmarks import breakdown as bd
from fairjax.benchmarks.forward import FAMILIES, make_config
from fairjax.benchmarks.train import synthetic_batch
from fairjax.models import build_model
from fairjax.optim import OptimConfig, make_optimizer
from fairjax.train.loop import make_train_step
from fairjax.typed_config import typed_block

GIB = 2 ** 30


def compile_step(family: str, size: str, algo: str, batch: int, seq: int, dtype: str,
                 remat: str):
    """(compiled train step, abstract state) of `algo` on preset `family/size`: abstract shapes
    only (`jax.eval_shape`), nothing is allocated; the step donates its state."""
    mcfg = make_config(family, size, dtype).replace(remat=remat)
    mod = FAMILIES[family][0]
    module = build_model(mcfg)
    cfg = _algorithm_cfg(algo, remat)

    def init(rng):  # traced: weights are never materialised
        base = mod.init_params(mcfg, rng)
        return build_algorithm(cfg, module, mcfg, base).init(rng)

    rng = jax.random.PRNGKey(0)
    params, frozen = jax.eval_shape(init, rng)
    # The loss closes over the model and config only; its init is never called here.
    algorithm = build_algorithm(cfg, module, mcfg, params)
    optimizer = make_optimizer(typed_block(cfg.optim, OptimConfig, "optim"), 1000)
    state = {"params": params, "opt_state": jax.eval_shape(optimizer.init, params),
             "frozen": frozen, "step": jax.ShapeDtypeStruct((), jnp.int32),
             "rng": jax.ShapeDtypeStruct(rng.shape, rng.dtype)}
    b = synthetic_batch(batch, seq, mcfg.vocab_size)
    b = {k: jax.ShapeDtypeStruct((1,) + v.shape, v.dtype) for k, v in b.items()}
    if algo.startswith("alol"):
        b["sequence_reward"] = jax.ShapeDtypeStruct((1, batch), jnp.float32)
        b["advantage"] = jax.ShapeDtypeStruct((1, batch), jnp.float32)
        b["prompt_mask"] = jax.ShapeDtypeStruct((1, batch, seq), jnp.float32)
    step = jax.jit(make_train_step(algorithm, optimizer), donate_argnums=(0,))
    return step.lower(state, b).compile(), state


def estimate(family: str, size: str, algo: str, batch: int, seq: int, dtype: str,
             remat: str, breakdown: bool = False, hlo_path: str | None = None) -> dict:
    """Memory analysis (bytes) of one compiled train step of `algo` on preset `family/size`;
    with `breakdown`, also its per-category split (benchmarks/breakdown.py) under "breakdown";
    `hlo_path`: also write the compiled HLO text there (to re-run the split without compiling)."""
    compiled, state = compile_step(family, size, algo, batch, seq, dtype, remat)
    if hlo_path:
        with open(hlo_path, "w") as fh:
            fh.write(compiled.as_text())
    params, frozen = state["params"], state["frozen"]
    m = compiled.memory_analysis()
    n = lambda t: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(t))  # noqa: E731
    out = {"algo": algo, "params_bytes": n(params), "frozen_bytes": n(frozen),
           "opt_state_bytes": n(state["opt_state"])}
    if m is not None:
        out.update(argument_bytes=m.argument_size_in_bytes, temp_bytes=m.temp_size_in_bytes,
                   output_bytes=m.output_size_in_bytes, alias_bytes=m.alias_size_in_bytes)
        out["peak_estimate_bytes"] = (m.argument_size_in_bytes + m.temp_size_in_bytes
                                      + m.output_size_in_bytes - m.alias_size_in_bytes)
    if breakdown:
        out["breakdown"] = bd.analyze(compiled, bd.vocab_dims(make_config(family, size,
                                                                           dtype).vocab_size))
    return out


def measured_peak() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def run(FLAGS) -> None:
    batch, seq = FLAGS.batch or 1, FLAGS.seq or 512
    dtype = FLAGS.dtype or "bfloat16"
    algos = (tuple(f"{a}{s}" for a in ("bc", "ilql", "alol") for s in ("", "_lora", "_qlora"))
             if FLAGS.algo == "all"
             else (FLAGS.algo,))
    remat = getattr(FLAGS, "remat", None) or "block"
    brk = bool(getattr(FLAGS, "breakdown", False))
    rows = [estimate(FLAGS.model, FLAGS.size, a, batch, seq, dtype, remat, brk,
                     f"{FLAGS.json}.{a}.hlo.txt" if brk and FLAGS.json else None) for a in algos]
    print(f"train-step memory {FLAGS.model}-{FLAGS.size} batch {batch} x {seq} {dtype} "
          f"remat={remat}, one device holding the whole state (AdamW, float32 params)")
    print(f"  {'algo':11s} {'params':>9s} {'frozen':>9s} {'adam':>9s} {'args':>9s} {'temps':>9s} "
          f"{'peak est.':>10s}")
    for r in rows:
        g = lambda k: r.get(k, float("nan")) / GIB  # noqa: E731
        print(f"  {r['algo']:11s} {g('params_bytes'):8.2f}G {g('frozen_bytes'):8.2f}G "
              f"{g('opt_state_bytes'):8.2f}G {g('argument_bytes'):8.2f}G {g('temp_bytes'):8.2f}G "
              f"{g('peak_estimate_bytes'):9.2f}G")
    if brk:
        for r in rows:
            bd.print_breakdown(r["algo"], r["breakdown"])
    peak = measured_peak()
    print(f"  measured peak on {jax.devices()[0].device_kind}: "
          + (f"{peak / GIB:.2f} GiB" if peak else "n/a (backend reports no memory stats)"))
    if FLAGS.json:
        with open(FLAGS.json, "w") as fh:
            json.dump({"model": FLAGS.model, "size": FLAGS.size, "batch": batch, "seq": seq,
                       "dtype": dtype, "remat": remat, "rows": rows, "measured_peak": peak}, fh,
                      indent=2)
