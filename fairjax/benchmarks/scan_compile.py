"""Compile time of one LM loss+grad step, unrolled vs scan_layers (24-layer tiny-width GPT-2)."""
import json, sys, time
import jax, jax.numpy as jnp
from fairjax.models import gpt2, layout

L = int(sys.argv[1]) if len(sys.argv) > 1 else 24
base = gpt2.PRESETS["tiny"].replace(num_layers=L)
ids = jnp.zeros((4, 64), jnp.int32)
out = {"layers": L, "hidden": base.hidden_size, "device": jax.devices()[0].device_kind}
params = gpt2.init_params(base, jax.random.PRNGKey(0))
for scan in (False, True, False, True):
    cfg = base.replace(scan_layers=scan)
    p = layout.to_layout(params, cfg)
    m = gpt2.Model(cfg)
    f = jax.jit(jax.value_and_grad(lambda p: jnp.mean(m.apply({"params": p}, ids).logits ** 2)))
    t0 = time.perf_counter(); lowered = f.lower(p); t1 = time.perf_counter()
    lowered.compile(); t2 = time.perf_counter()
    out[f"{'scan' if scan else 'unrolled'}"] = {"trace_lower_s": round(t1 - t0, 2),
                                                "compile_s": round(t2 - t1, 2)}
print(json.dumps(out))
