"""Where the time goes: trace a few calls with the JAX profiler and sum device time per kernel.

`python -m fairjax.bench train --algo=bc --size=medium --profile=DIR` writes a Perfetto trace under
DIR (open it in ui.perfetto.dev or TensorBoard) and prints the top kernels and a per-category split
(matmul / attention / fusions / reductions / copies / collectives), from the trace's complete
events on the device timelines (`/device:GPU:0` ...; on CPU the host XLA thunks stand in).
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
from typing import Any, Callable

import jax

CATEGORIES = (  # first match wins; on lower-cased kernel names
    ("attention", r"cudnn|flash|fmha|attention"),
    ("matmul", r"gemm|matmul|cutlass|cublas|sm90_|dot|wgmma|xmma|ynn_"),
    ("collective", r"nccl|all-reduce|all_reduce|allreduce|all-gather|reduce-scatter|collective"),
    ("copy/transpose", r"copy|transpose|memcpy|memset|dynamic-update-slice|dynamic_update_slice"),
    ("reduction", r"reduce|softmax|norm"),
    ("scatter/gather", r"scatter|gather"),
    ("fusion", r"fusion|loop_|input_|kernel"),
)
HOST_NOISE = re.compile(r"^\$|Pjit|PjRt|Execute|Allocate|Handle inputs|ParseArguments|Await|"
                        r"CollectGarbage|CreateOutputs|^Thunk|ThreadpoolListener")


def trace(fn: Callable[[], Any], calls: int, log_dir: str) -> str:
    """Run `fn` (which must block on its result) `calls` times under the profiler; trace path."""
    fn()  # compiled and warm before tracing
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
        for _ in range(calls):
            fn()
    paths = sorted(glob.glob(os.path.join(log_dir, "**", "perfetto_trace.json.gz"), recursive=True),
                   key=os.path.getmtime)
    if not paths:
        raise FileNotFoundError(f"{log_dir}: the profiler wrote no perfetto_trace.json.gz")
    return paths[-1]


def category(kernel: str) -> str:
    k = kernel.lower()
    return next((name for name, pat in CATEGORIES if re.search(pat, k)), "other")


def summarize(trace_path: str, calls: int, top: int = 15) -> dict:
    """Device time per kernel and per category (ms per call) from a Perfetto/Chrome trace."""
    with gzip.open(trace_path, "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    procs = {e["pid"]: e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    device = {pid for pid, name in procs.items() if name.startswith("/device:")}
    per_kernel: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") != "X":
            continue
        if device:
            if e["pid"] not in device:
                continue
        elif HOST_NOISE.search(e["name"]):
            continue
        per_kernel[e["name"]] += float(e.get("dur", 0.0)) / 1e3 / calls  # us -> ms per call
    total = sum(per_kernel.values())
    per_cat: collections.Counter = collections.Counter()
    for k, ms in per_kernel.items():
        per_cat[category(k)] += ms
    return {"trace": trace_path, "timeline": "device" if device else "host",
            "total_ms_per_call": total,
            "categories": {k: v for k, v in per_cat.most_common()},
            "top_kernels": [{"name": k, "ms_per_call": v, "category": category(k)}
                            for k, v in per_kernel.most_common(top)]}


def print_summary(s: dict) -> None:
    print(f"  profile ({s['timeline']} timeline, {s['total_ms_per_call']:.1f} ms of kernels per "
          f"call): {s['trace']}")
    tot = s["total_ms_per_call"] or 1.0
    for name, ms in s["categories"].items():
        print(f"    {name:16s} {ms:9.2f} ms  {ms / tot:6.1%}")
    print("    top kernels:")
    for k in s["top_kernels"]:
        print(f"      {k['ms_per_call']:9.3f} ms  {k['category']:14s} {k['name'][:90]}")
