"""Reward normalisation: `reward.normalize = none | standardize | rank | minmax` (numpy only).

Statistics are fitted on the training split's rewards r_train [N] and stored as a small JSON-ready
dict (`fit_normalizer`), so the run dir keeps them and every later use of the run's rewards
(`apply_normalizer`) maps a raw reward to the same value:

* none         r' = r
* standardize  r' = (r − μ) / σ             μ, σ (ddof=0) of r_train; σ = 0 -> σ := 1
* rank         r' = F(r) − 1/2 ∈ [−1/2, 1/2] F = mid-rank empirical CDF of r_train, linearly
                                            interpolated between its distinct values (ties get the
                                            mean rank; values outside the train range clip)
* minmax       r' = (r − min) / (max − min) train min/max (max = min -> r − min); unseen values
                                            outside the range stay linear (may leave [0, 1])

`rank` stores the distinct train values and their mid-rank CDF (≤ N floats each).
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

MODES = ("none", "standardize", "rank", "minmax")
FORMAT = "fairjax.reward_normalizer.v1"


def _finite(rewards: Any, what: str) -> np.ndarray:
    r = np.asarray(rewards, np.float64).reshape(-1)
    bad = np.nonzero(~np.isfinite(r))[0]
    if bad.size:
        raise ValueError(f"{what}: reward {bad[0]} is {r[bad[0]]} (all rewards must be finite; "
                         f"{bad.size} are not)")
    return r


def fit_normalizer(train_rewards: Any, mode: str) -> dict[str, Any]:
    """Statistics of `mode` from the training rewards [N] -> JSON-ready dict (see module docstring)."""
    if mode not in MODES:
        raise ValueError(f"reward.normalize={mode!r}; expected one of {list(MODES)}")
    r = _finite(train_rewards, "fit_normalizer")
    if r.size == 0 and mode != "none":
        raise ValueError(f"reward.normalize={mode!r} needs at least one training reward, got none")
    out: dict[str, Any] = {"format": FORMAT, "mode": mode, "n": int(r.size)}
    if mode == "standardize":
        sd = float(r.std())
        out.update(mean=float(r.mean()), std=sd if sd > 0 else 1.0)
    elif mode == "minmax":
        out.update(min=float(r.min()), max=float(r.max()))
    elif mode == "rank":
        vals, counts = np.unique(r, return_counts=True)
        below = np.cumsum(counts) - counts  # rewards strictly below each distinct value
        cdf = (below + 0.5 * counts) / r.size  # mid-rank CDF in (0, 1)
        out.update(values=vals.tolist(), cdf=cdf.tolist())
    return out


def apply_normalizer(rewards: Any, stats: Mapping[str, Any]) -> np.ndarray:
    """Raw rewards [N] -> normalised [N] float64 with stats from `fit_normalizer`."""
    mode = stats.get("mode")
    if stats.get("format") != FORMAT or mode not in MODES:
        raise ValueError(f"not reward-normalizer statistics (format={stats.get('format')!r}, "
                         f"mode={mode!r}); expected format {FORMAT!r} from fit_normalizer")
    r = _finite(rewards, "apply_normalizer")
    if mode == "standardize":
        return (r - stats["mean"]) / stats["std"]
    if mode == "minmax":
        span = stats["max"] - stats["min"]
        return (r - stats["min"]) / (span if span > 0 else 1.0)
    if mode == "rank":
        return np.interp(r, np.asarray(stats["values"]), np.asarray(stats["cdf"])) - 0.5
    return r.copy()


def save_normalizer(stats: Mapping[str, Any], path: str | os.PathLike) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(dict(stats), f, indent=1)
        f.write("\n")


def load_normalizer(path: str | os.PathLike) -> dict[str, Any]:
    """Read stats written by `save_normalizer`; a file of another kind fails naming the path."""
    try:
        with open(path, encoding="utf-8") as f:
            stats = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read reward-normalizer statistics ({e})") from e
    if not isinstance(stats, dict) or stats.get("format") != FORMAT:
        raise ValueError(f"{path}: not reward-normalizer statistics (expected format {FORMAT!r})")
    return stats
