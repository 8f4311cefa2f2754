"""Fault injection for the reliability tests (no jax import; unset in normal runs).

FAIRJAX_FAULT="[STAGE@]POINT[:PROCESS[:MODE]]" makes process PROCESS (default 0) die at fault
point POINT of stage STAGE: the training loop calls `inject(cfg.algorithm, step)` right after
optimizer step `step` (and its checkpoint save request, possibly still writing asynchronously);
the evaluation calls `inject("eval", rows_written)` after each appended block of eval_logs rows.
Without `STAGE@` any training stage matches (not the evaluation). MODE: "kill" = SIGKILL
(default), "exit" = os._exit(3), "raise" = raise `InjectedFault` (in-process tests).
"""
from __future__ import annotations

import os
import signal

FAULT_ENV = "FAIRJAX_FAULT"


class InjectedFault(RuntimeError):
    """Raised at a fault point with MODE "raise"."""


def inject(stage: str, point: int, process_index: int = 0) -> None:
    """Die here if FAIRJAX_FAULT names (`stage`, `point`, `process_index`)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    where, at, rest = spec.rpartition("@")
    if (where != stage) if at else (stage == "eval"):
        return
    parts = rest.split(":")
    if int(parts[0]) != point or (int(parts[1]) if len(parts) > 1 else 0) != process_index:
        return
    mode = parts[2] if len(parts) > 2 else "kill"
    if mode == "exit":
        os._exit(3)
    if mode == "raise":
        raise InjectedFault(f"{FAULT_ENV}={spec}: injected fault at {stage} point {point}")
    os.kill(os.getpid(), signal.SIGKILL)
