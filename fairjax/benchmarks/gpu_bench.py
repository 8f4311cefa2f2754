"""One-shot accelerator benchmark (`launch/gpu_bench.sh`): MFU of BC LLaMA-1B and ILQL
GPT-2-medium in bf16 with the fast settings (cuDNN attention, vocabulary-chunked heads, named
remat), and a LLaMA-7B-shaped shared-base ILQL LoRA step (random weights, bf16 or int8 base) with
tokens/s and the measured peak device memory.

`python -m fairjax.benchmarks.gpu_bench [--dry-run] [--out PATH] [--budget S]`

Each part runs in its own subprocess with its own time box, so one part failing (OOM, compile
error, timeout) still leaves the others' figures; the parent prints one JSON object (and writes it
to --out / $OUT/gpu_bench.json). `--dry-run` runs the same parts with tiny shapes on whatever
backend is present (the CPU test of this script).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from fairjax.benchmarks.train import PEAK_BF16, fairjax_step

# name -> (step kwargs for fairjax.benchmarks.train.fairjax_step, time box in seconds)
PARTS = {
    "bc_llama_1b": (dict(algo="bc", family="llama", size="1b", batch=8, seq=1024, remat="dots",
                         attention="cudnn"), 150),
    "ilql_gpt2_medium": (dict(algo="ilql", family="gpt2", size="medium", batch=16, seq=512,
                              remat="none", attention="cudnn"), 120),
    "ilql_lora_llama_7b": (dict(algo="ilql", family="llama", size="7b", batch=4, seq=512,
                                remat="block", attention="cudnn", lora="none"), 200),
}
DRY = {"bc_llama_1b": dict(size="tiny", batch=2, seq=32, attention="xla"),
       "ilql_gpt2_medium": dict(size="tiny", batch=2, seq=32, attention="xla"),
       "ilql_lora_llama_7b": dict(size="tiny", batch=2, seq=32, attention="xla")}


def run_part(name: str, dry: bool) -> dict:
    """Run one part in this process; returns its figures (MFU where the device peak is known)."""
    import jax

    kw = dict(PARTS[name][0])
    if dry:
        kw.update(DRY[name])
    dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    t0 = time.perf_counter()
    res = fairjax_step(kw.pop("algo"), kw.pop("size"), kw.pop("batch"), kw.pop("seq"), dtype,
                       steps=2 if dry else 5, **kw)
    res.update(device=jax.devices()[0].device_kind, backend=jax.default_backend(), dtype=dtype,
               settings={**PARTS[name][0], **(DRY[name] if dry else {})},
               wall_s=time.perf_counter() - t0)
    peak = next((v for k, v in PEAK_BF16.items() if k in res["device"]), None)
    if peak and res["flops"]:
        res["mfu"] = res["flops"] / res["step_s"] / peak
    if "peak_bytes" in res:
        res["peak_gib"] = res["peak_bytes"] / 2 ** 30
    return res


def _child(name: str, dry: bool, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "fairjax.benchmarks.gpu_bench", "--part", name]
    if dry:
        cmd.append("--dry-run")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    line = next((ln for ln in reversed(p.stdout.splitlines()) if ln.startswith("{")), None)
    if p.returncode != 0 or line is None:
        tail = (p.stderr or p.stdout).strip().splitlines()[-6:]
        return {"error": f"exit {p.returncode}", "tail": tail}
    return json.loads(line)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes (CPU check)")
    ap.add_argument("--part", choices=sorted(PARTS), help="run one part in-process (internal)")
    ap.add_argument("--only", default="", help="comma-separated parts to run (default: all)")
    ap.add_argument("--budget", type=float, default=440.0, help="total seconds for all parts")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args(argv)
    if a.part:
        print(json.dumps(run_part(a.part, a.dry_run)))
        return {}
    t0 = time.perf_counter()
    names = [n for n in PARTS if not a.only or n in a.only.split(",")]
    out: dict = {"dry_run": a.dry_run, "parts": {}}
    for name in names:
        left = a.budget - (time.perf_counter() - t0)
        box = min(PARTS[name][1], left - 5)
        out["parts"][name] = (_child(name, a.dry_run, box) if box > 20
                              else {"error": "skipped: no time left in the budget"})
        print(f"[gpu_bench] {name}: {json.dumps(out['parts'][name])[:300]}", file=sys.stderr)
    out["total_s"] = time.perf_counter() - t0
    text = json.dumps(out, indent=2)
    print(text)
    path = a.out or (os.path.join(os.environ["OUT"], "gpu_bench.json") if os.environ.get("OUT")
                     else None)
    if path:
        with open(path, "w") as fh:
            fh.write(text + "\n")
    return out


if __name__ == "__main__":
    main()
