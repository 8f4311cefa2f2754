"""Block-parameter layouts of the LMs: unrolled (`h_0..h_{L-1}`, `layers_0..`) and scanned
(`h`, `layers`: the same leaves stacked on a leading layer axis [L, ...], what a
`scan_layers=True` model's `nn.scan` reads).

* `scan_params(params, num_layers)` / `unscan_params(params)`: pure conversions (any nesting: a
  dict holding `h_0..h_{L-1}` at some level gets `h`, and back; other keys untouched).
* `detect_layout(params)`: ("unrolled" | "scanned", block prefix, L), or None.
* `to_layout(params, config, source)`: the LM param tree in `config.scan_layers`' layout,
  converting when needed; a tree in neither layout raises `CheckpointMismatchError` saying what
  was found and the key path.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import jax.numpy as jnp
import numpy as np

from fairjax.errors import CheckpointMismatchError

PyTree = Any
BLOCK_PREFIXES = ("h", "layers")  # GPT-2, LLaMA
_UNROLLED = re.compile(rf"^({'|'.join(BLOCK_PREFIXES)})_(\d+)$")


def _stack(trees: list) -> PyTree:
    """Leaves of equal-structure trees stacked on a new axis 0 ([L, ...])."""
    if isinstance(trees[0], Mapping):
        keys = list(trees[0])
        for t in trees[1:]:
            if list(t) != keys and sorted(t) != sorted(keys):
                raise CheckpointMismatchError(source="scan_params", note=(
                    f"layers differ in structure: {sorted(keys)} vs {sorted(t)}"))
        return {k: _stack([t[k] for t in trees]) for k in keys}
    if all(isinstance(t, np.ndarray) for t in trees):  # host trees stay numpy
        return np.stack(trees)
    return jnp.stack(trees)


def _unrolled_groups(node: Mapping) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for k in node:
        m = _UNROLLED.match(str(k))
        if m:
            groups.setdefault(m.group(1), []).append(int(m.group(2)))
    return groups


def scan_params(params: PyTree, num_layers: int) -> PyTree:
    """Unrolled -> scanned: every dict level holding `{p}_0..{p}_{L-1}` (p in h, layers) gets one
    `p` entry whose leaves are the layers' leaves stacked [L, ...]. L must equal `num_layers`."""
    if not isinstance(params, Mapping):
        return params
    out = {k: scan_params(v, num_layers) for k, v in params.items() if not _UNROLLED.match(str(k))}
    for prefix, idx in _unrolled_groups(params).items():
        if sorted(idx) != list(range(num_layers)):
            raise CheckpointMismatchError(source="scan_params", note=(
                f"found unrolled layers {_describe_idx(prefix, idx)}, expected "
                f"{prefix}_0..{prefix}_{num_layers - 1} (num_layers={num_layers})"))
        if prefix in out:
            raise CheckpointMismatchError(source="scan_params", note=(
                f"found both unrolled {prefix}_0.. and scanned {prefix!r} blocks"))
        out[prefix] = _stack([params[f"{prefix}_{i}"] for i in range(num_layers)])
    return out


def _leading(tree: PyTree) -> set:
    if isinstance(tree, Mapping):
        return set().union(*(_leading(v) for v in tree.values())) if tree else set()
    return {np.shape(tree)[0] if np.ndim(tree) else None}


def _slice(tree: PyTree, i: int) -> PyTree:
    if isinstance(tree, Mapping):
        return {k: _slice(v, i) for k, v in tree.items()}
    return tree[i]


def unscan_params(params: PyTree) -> PyTree:
    """Scanned -> unrolled: every dict entry `h` / `layers` whose leaves share a leading axis L
    becomes `{p}_0..{p}_{L-1}` (inverse of `scan_params`)."""
    if not isinstance(params, Mapping):
        return params
    out = {}
    for k, v in params.items():
        if k in BLOCK_PREFIXES and isinstance(v, Mapping):
            lead = _leading(v)
            if len(lead) != 1 or None in lead:
                raise CheckpointMismatchError(source="unscan_params", note=(
                    f"scanned blocks {k!r} have no common leading layer axis (sizes {lead})"))
            n = lead.pop()
            out.update({f"{k}_{i}": _slice(v, i) for i in range(n)})
        else:
            out[k] = unscan_params(v)
    return out


def _describe_idx(prefix: str, idx: list[int]) -> str:
    idx = sorted(idx)
    span = f"{prefix}_{idx[0]}..{prefix}_{idx[-1]}" if len(idx) > 1 else f"{prefix}_{idx[0]}"
    return f"{span} ({len(idx)} blocks)"


def detect_layout(params: PyTree) -> Optional[tuple[str, str, int]]:
    """("unrolled" | "scanned", prefix, L) from the top-level keys of an LM param tree, else None."""
    if not isinstance(params, Mapping):
        return None
    groups = _unrolled_groups(params)
    for prefix, idx in groups.items():
        return "unrolled", prefix, len(idx)
    for prefix in BLOCK_PREFIXES:
        if isinstance(params.get(prefix), Mapping):
            lead = _leading(params[prefix])
            return "scanned", prefix, (lead.pop() if len(lead) == 1 else -1)
    return None


def to_layout(params: PyTree, config, source: str = "params") -> PyTree:
    """`params` (an LM param tree in either layout) in the layout of `config` (its
    `scan_layers`). Raises `CheckpointMismatchError` naming the layout found, the one expected and
    `source` when the tree holds neither or a different number of layers."""
    want_scan = bool(getattr(config, "scan_layers", False))
    prefix = {"gpt2": "h", "llama": "layers"}[config.kind]
    n = config.num_layers
    want = (f"scanned layers {prefix!r} with a leading axis of {n} (model.scan_layers=True)"
            if want_scan else f"unrolled layers {prefix}_0..{prefix}_{n - 1} "
                              "(model.scan_layers=False)")
    found = detect_layout(params)
    if found is None:
        keys = sorted(map(str, params)) if isinstance(params, Mapping) else type(params).__name__
        raise CheckpointMismatchError(source=source, note=(
            f"found neither unrolled ({prefix}_0..) nor scanned ({prefix!r}) blocks at the top "
            f"level (keys: {keys}); the model expects {want}"))
    kind, got_prefix, got_n = found
    if got_prefix != prefix or got_n != n:
        what = (_describe_idx(got_prefix, _unrolled_groups(params)[got_prefix])
                if kind == "unrolled" else f"{got_prefix!r} with leading axis {got_n}")
        raise CheckpointMismatchError(source=source, note=(
            f"found {kind} layers {what} at key path /{got_prefix}"
            f"{'_*' if kind == 'unrolled' else ''}, the model expects {want}"))
    if (kind == "scanned") == want_scan:
        return params
    return scan_params(params, n) if want_scan else unscan_params(params)
