"""Run directories: the resolved config and the Orbax checkpoint items (no training code).

Layout (docs/architecture.md):
    RUN_DIR/config.json      resolved config (plain JSON)
    RUN_DIR/config.py        `get_config()` returning the same config: `--config=RUN_DIR/config.py`
    RUN_DIR/config_history/  <n>.json per launch (+ <n>.diff.json: the keys changed since n-1)
    RUN_DIR/model/           fairjax model dir of the initial policy + tokenizer
    RUN_DIR/checkpoints/<step>/{params,opt_state,frozen,meta,data}   Orbax CheckpointManager
    RUN_DIR/metrics.jsonl    one JSON object per log/eval line (no duplicates across resumes)
    RUN_DIR/summary.json     last step, best step, last metrics, data read counts (kept/skipped)
    RUN_DIR/tb/              TensorBoard event files
    RUN_DIR/data/            the generated demo corpus (when no data paths are configured)

Saving/restoring a train state given its abstract template is here (`state_items`,
`restore_state`, `restore_trees`); rebuilding a run's objective to restore its policy is
`fairjax.runs` (a layer above: io never imports objectives).
"""
from __future__ import annotations

import json
import logging
import os
import pprint
from pathlib import Path
from typing import Any, Optional, Union

from fairjax.errors import ConfigError

CONFIG_JSON = "config.json"
CONFIG_PY = "config.py"
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
CONFIG_HISTORY = "config_history"
SUMMARY_FILE = "summary.json"
TB_DIR = "tb"
# Orbax items of one checkpoint.
ITEMS = ("params", "opt_state", "frozen", "meta", "data")

_CONFIG_PY_TEMPLATE = '''"""Resolved config of the run in this directory (written by fairjax.train).

Relaunch / continue: python -m fairjax.train --config={path}
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict({config})
    c.lock()
    return c
'''


def is_run_dir(path: Union[str, os.PathLike]) -> bool:
    p = Path(path)
    return (p / CONFIG_JSON).is_file() and (p / CHECKPOINT_DIR).is_dir()


def save_config(config: Any, run_dir: Union[str, os.PathLike]) -> None:
    """Write config.json and config.py (a relaunchable `get_config()`) and record the launch in
    config_history/ (`record_launch`)."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(d, indent=2, sort_keys=True, default=list)
    record_launch(json.loads(text), run_dir)
    (run_dir / CONFIG_JSON).write_text(text + "\n")
    (run_dir / CONFIG_PY).write_text(_CONFIG_PY_TEMPLATE.format(
        path=run_dir / CONFIG_PY, config=pprint.pformat(d, indent=1, width=100, sort_dicts=True)))


def _flat(d: Any, prefix: str = "") -> dict:
    """{"a.b.c": leaf} of a nested dict (the `--config.a.b.c` spelling of every key)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_diff(old: dict, new: dict) -> dict:
    """{"a.b": [old, new]} for every key whose value differs (None = absent on that side)."""
    a, b = _flat(old), _flat(new)
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def record_launch(config: dict, run_dir: Union[str, os.PathLike]) -> Path:
    """Append launch n to RUN_DIR/config_history/: `<n>.json` = the launch's resolved config,
    `<n>.diff.json` = {"key": [previous, now]} against launch n-1 (empty for an identical
    relaunch; launch 0 has no diff). Returns the `<n>.json` path."""
    hist = Path(run_dir) / CONFIG_HISTORY
    hist.mkdir(parents=True, exist_ok=True)
    done = sorted(int(p.stem) for p in hist.glob("*.json") if p.stem.isdigit())
    n = done[-1] + 1 if done else 0
    path = hist / f"{n}.json"
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if done:
        previous = json.loads((hist / f"{done[-1]}.json").read_text())
        (hist / f"{n}.diff.json").write_text(
            json.dumps(config_diff(previous, config), indent=2, default=list) + "\n")
    return path


def write_summary(run_dir: Union[str, os.PathLike], summary: dict) -> None:
    """RUN_DIR/summary.json (written at the end of each launch)."""
    path = Path(run_dir) / SUMMARY_FILE
    path.write_text(json.dumps(summary, indent=2, sort_keys=True, default=float) + "\n")


def read_summary(run_dir: Union[str, os.PathLike]) -> dict:
    """RUN_DIR/summary.json, or {} when there is none (or it is unreadable)."""
    try:
        return json.loads((Path(run_dir) / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return {}


def prune_metrics(run_dir: Union[str, os.PathLike], step: int) -> int:
    """Drop the rows logged after `step` (the checkpoint a run resumes from; 0 = a fresh start)
    from RUN_DIR/metrics.jsonl and RUN_DIR/tb, so that the steps the resumed run re-executes are
    not recorded twice. A truncated last line (a crash mid-write) is dropped too. Returns the
    number of rows dropped."""
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    dropped = 0
    if path.is_file():
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                ok = int(row["step"]) <= step
            except (ValueError, KeyError, TypeError):
                ok = False
            if ok:
                keep.append(line)
            else:
                dropped += 1
        if dropped:
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
            os.replace(tmp, path)
    if (run_dir / TB_DIR).is_dir():
        dropped += _prune_tb(run_dir / TB_DIR, step)
    return dropped


def read_tb_scalars(tb_dir: Union[str, os.PathLike]) -> list[tuple[str, int, float, float]]:
    """(tag, step, value, wall_time) of every scalar in the event files of `tb_dir`, file order."""
    import struct

    from tensorboardX.proto import event_pb2

    out = []
    for f in sorted(Path(tb_dir).glob("events.out.tfevents.*")):
        data, pos = f.read_bytes(), 0
        while pos + 12 <= len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            payload = data[pos + 12:pos + 12 + n]
            if len(payload) < n:
                break  # a record cut by the crash
            pos += 16 + n
            ev = event_pb2.Event.FromString(payload)
            for v in ev.summary.value:
                out.append((v.tag, int(ev.step), float(v.simple_value), float(ev.wall_time)))
    return out


def _prune_tb(tb_dir: Path, step: int) -> int:
    """Rewrite the TensorBoard scalars of steps <= `step` into one new event file."""
    rows = read_tb_scalars(tb_dir)
    keep = [r for r in rows if r[1] <= step]
    if len(keep) == len(rows):
        return 0
    from tensorboardX import SummaryWriter

    old = list(tb_dir.glob("events.out.tfevents.*"))
    writer = SummaryWriter(str(tb_dir), filename_suffix=".pruned")
    for tag, s, value, wall in keep:
        writer.add_scalar(tag, value, s, walltime=wall)
    writer.close()
    for f in old:
        f.unlink()
    return len(rows) - len(keep)


def load_config(run_dir: Union[str, os.PathLike]):
    """The resolved `ml_collections.ConfigDict` of a run dir (from config.json)."""
    import ml_collections

    path = Path(run_dir) / CONFIG_JSON
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a fairjax run directory: {path} is missing")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e
    return ml_collections.ConfigDict(_tuples(d))


def _tuples(d: Any) -> Any:
    """JSON lists back to tuples (configs hold tuples, e.g. data.buckets)."""
    if isinstance(d, dict):
        return {k: _tuples(v) for k, v in d.items()}
    if isinstance(d, list):
        return tuple(_tuples(v) for v in d)
    return d


class _DropOrbaxNotices(logging.Filter):
    """Orbax warns "Given directory is read only" (and that save_interval_steps became 0) whenever a
    manager is opened with `read_only=True`, which fairjax does to restore from a (writable) run
    dir, and "Requested `tracked_metric`; did not provide metrics" for a save before the first
    eval (or in a run without eval): both are fairjax's choices, not the user's, so those lines
    are dropped."""

    NOTICES = ("Given directory is read only", "CheckpointManagerOptions.read_only=True",
               "Requested `tracked_metric`")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOTICES)


_NOTICE_FILTER = _DropOrbaxNotices()


def checkpoint_manager(run_dir: Union[str, os.PathLike], *, keep: int = 2, async_save: bool = True,
                       read_only: bool = False):
    """Orbax CheckpointManager on RUN_DIR/checkpoints keeping the `keep` latest checkpoints plus
    the one with the lowest `eval_loss` metric."""
    import orbax.checkpoint as ocp
    from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

    logging.getLogger("absl").addFilter(_NOTICE_FILTER)  # idempotent; before the options (they log)

    policy = pp.AnyPreservationPolicy([
        pp.LatestN(n=max(int(keep), 1)),
        pp.BestN(get_metric_fn=lambda m: m["eval_loss"], reverse=True, n=1,
                 keep_checkpoints_without_metrics=False),
    ])
    # best_fn only makes Orbax record each save's metrics (for `best_step`); which checkpoints
    # survive is decided by the preservation policy.
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, best_fn=lambda m: m["eval_loss"], best_mode="min", enable_async_checkpointing=async_save, read_only=read_only,
        create=not read_only)
    return ocp.CheckpointManager(Path(run_dir).absolute() / CHECKPOINT_DIR, item_names=ITEMS,
                                 options=options)


def best_step(manager) -> Optional[int]:
    """Step with the lowest saved `eval_loss` metric (None when no checkpoint has one)."""
    best = None
    for s in manager.all_steps():
        try:
            m = manager.metrics(s)
        except Exception:  # noqa: BLE001 - metrics file absent for this step
            m = None
        if m and "eval_loss" in m and (best is None or m["eval_loss"] < best[1]):
            best = (s, float(m["eval_loss"]))
    return None if best is None else best[0]


def resolve_step(manager, step: Union[None, str, int], run_dir: Any = "") -> int:
    """None/"best" -> best step (falls back to latest); "latest" -> latest; int -> that step."""
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"{run_dir}: no checkpoint in {CHECKPOINT_DIR}/")
    if step in (None, "best"):
        b = best_step(manager)
        return b if b is not None else max(steps)
    if step == "latest":
        return max(steps)
    s = int(step)
    if s not in steps:
        raise FileNotFoundError(f"{run_dir}: no checkpoint for step {s}; available: {sorted(steps)}")
    return s


STATE_TREES = ("params", "opt_state", "frozen")


def state_items(state: dict, data_state: dict):
    """Orbax Composite of a train state {params, opt_state, frozen, step, rng} + the data
    iterator state. Trees without arrays (e.g. BC's empty `frozen`) are not saved (Orbax refuses
    empty items); `restore_state` takes them from the template."""
    import jax
    import orbax.checkpoint as ocp

    items = {k: ocp.args.StandardSave(state[k]) for k in STATE_TREES if jax.tree.leaves(state[k])}
    items["meta"] = ocp.args.StandardSave({"step": state["step"], "rng": state["rng"]})
    items["data"] = ocp.args.JsonSave(data_state)
    return ocp.args.Composite(**items)


def restore_state(manager, step: int, abstract: dict) -> tuple[dict, dict]:
    """(state, data iterator state) of checkpoint `step`; `abstract`: the state's
    ShapeDtypeStructs (with shardings) {params, opt_state, frozen, step, rng}."""
    import jax
    import orbax.checkpoint as ocp

    a = abstract
    trees = [k for k in STATE_TREES if jax.tree.leaves(a[k])]
    r = manager.restore(step, args=ocp.args.Composite(
        **{k: ocp.args.StandardRestore(a[k]) for k in trees},
        meta=ocp.args.StandardRestore({"step": a["step"], "rng": a["rng"]}),
        data=ocp.args.JsonRestore(),
    ))
    state = {k: (r[k] if k in trees else a[k]) for k in STATE_TREES}
    state.update(step=r["meta"]["step"], rng=r["meta"]["rng"])
    return state, dict(r["data"] or {})


def restore_trees(run_dir: Union[str, os.PathLike], step: Union[None, str, int],
                  abstract: dict) -> tuple[dict, int]:
    """({name: tree} restored for the abstract `{name: tree}` items (e.g. params, frozen; empty
    trees are returned as given), resolved step) of a run dir's checkpoint `step` (see
    `resolve_step`), read-only."""
    import jax
    import orbax.checkpoint as ocp

    manager = checkpoint_manager(run_dir, read_only=True, async_save=False)
    try:
        s = resolve_step(manager, step, run_dir)
        trees = {k: t for k, t in abstract.items() if jax.tree.leaves(t)}
        r = manager.restore(s, args=ocp.args.Composite(
            **{k: ocp.args.StandardRestore(t) for k, t in trees.items()}))
    finally:
        manager.close()
    return {k: (r[k] if k in trees else t) for k, t in abstract.items()}, int(s)


def has_checkpoint(run_dir: Union[str, os.PathLike]) -> bool:
    """RUN_DIR/checkpoints holds at least one step."""
    d = Path(run_dir) / CHECKPOINT_DIR
    return d.is_dir() and any(p.name.isdigit() for p in d.iterdir())
