"""Corpus statistics for evaluation: NaN-aware summaries, bootstrap CIs, paired comparisons (numpy).

numpy + the standard library only (the normal quantile comes from `statistics.NormalDist`); this
module must never import jax/flax, like the rest of `fairjax.eval`.

Conventions:

* Every function drops NaN entries (for paired functions: pairs with a NaN on either side) and
  reports how many values were used (`n`). Booleans are treated as 0/1, so their mean is a rate.
* `std` is the sample standard deviation (`ddof=1`, as pandas reports it; `ddof` is a parameter).
* CIs are percentile bootstrap intervals of the statistic (`n_boot` resamples with replacement,
  `numpy.random.default_rng(seed)`), so a fixed seed gives fixed numbers. Empty input gives NaN
  values, never an exception; a single value gives a zero-width bootstrap CI and NaN std.
* `normal_ci(value, stderr)` is the value ± z·stderr interval RATE and most papers report.
"""
from __future__ import annotations

from statistics import NormalDist
from typing import Any, Callable, Mapping

import numpy as np

_MAX_BOOT_ELEMS = 1 << 22  # resample in chunks of at most this many drawn values (~32 MiB)


def as_float_1d(x: Any, name: str = "x") -> np.ndarray:
    """Any array-like (bool/int/float, list or ndarray) -> float64 [N]. Raises on >1-D or non-numeric."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: expected numeric values, got {type(x).__name__} ({e})") from None
    if a.ndim == 0:
        a = a[None]
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of per-row values, got shape {a.shape}")
    return a


def drop_nan(x: Any, name: str = "x") -> np.ndarray:
    """float64 [N'] with the NaN entries of x [N] removed."""
    a = as_float_1d(x, name)
    return a[~np.isnan(a)]


def drop_nan_pairs(a: Any, b: Any, names: tuple[str, str] = ("before", "after")
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(a[ok], b[ok]) for a, b [N] of equal length, ok = neither side is NaN."""
    x, y = as_float_1d(a, names[0]), as_float_1d(b, names[1])
    if x.shape != y.shape:
        raise ValueError(f"paired values need equal lengths, got {names[0]}={x.shape[0]} and "
                         f"{names[1]}={y.shape[0]}")
    ok = ~(np.isnan(x) | np.isnan(y))
    return x[ok], y[ok]


def z_value(ci: float = 0.95) -> float:
    """Two-sided standard-normal quantile for a central `ci` interval (0.95 -> 1.95996...)."""
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    return NormalDist().inv_cdf(0.5 + ci / 2.0)


def normal_ci(value: float, stderr: float, ci: float = 0.95) -> tuple[float, float]:
    """value ± z·stderr (RATE's `effect ± 1.96·SE` for ci=0.95)."""
    z = z_value(ci)
    return float(value - z * stderr), float(value + z * stderr)


def _std(x: np.ndarray, ddof: int) -> float:
    return float(x.std(ddof=ddof)) if x.size > ddof else float("nan")


def stderr_mean(x: Any, ddof: int = 1) -> float:
    """Standard error of the mean, std(x, ddof)/sqrt(n) over the non-NaN entries of x [N]."""
    a = drop_nan(x)
    return _std(a, ddof) / np.sqrt(a.size) if a.size else float("nan")


def welch_stderr(treated: Any, untreated: Any) -> float:
    """Unpaired SE of a difference of means: sqrt(var1/n1 + var0/n0), ddof=1 (RATE's unpaired form)."""
    t, u = drop_nan(treated, "treated"), drop_nan(untreated, "untreated")
    if t.size < 2 or u.size < 2:
        return float("nan")
    return float(np.sqrt(t.var(ddof=1) / t.size + u.var(ddof=1) / u.size))


def paired_stderr(treated: Any, untreated: Any) -> float:
    """Paired SE of mean(treated - untreated): std(d, ddof=1)/sqrt(n) (RATE's paired form)."""
    t, u = drop_nan_pairs(treated, untreated, ("treated", "untreated"))
    return stderr_mean(t - u)


def _stat_rows(stat: Callable[..., Any], samples: np.ndarray) -> np.ndarray:
    """stat applied to each row of samples [B, N] -> [B]; uses stat(..., axis=1) when it works."""
    try:
        out = np.asarray(stat(samples, axis=1), np.float64)
        if out.shape == (samples.shape[0],):
            return out
    except TypeError:
        pass
    return np.array([float(stat(row)) for row in samples], np.float64)


def bootstrap_distribution(x: Any, stat: Callable[..., Any] = np.mean, n_boot: int = 1000,
                           seed: int = 0) -> np.ndarray:
    """[n_boot] values of stat on resamples (with replacement) of the non-NaN entries of x [N].

    `stat(values[N]) -> float`; if it accepts `axis=` (numpy reductions do) the resamples are
    evaluated in vectorised chunks. Returns an empty array when x has no non-NaN entry.
    """
    a = drop_nan(x)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if a.size == 0:
        return np.empty(0, np.float64)
    rng = np.random.default_rng(seed)
    return np.concatenate([_stat_rows(stat, a[idx]) for idx in resample_indices(a.size, n_boot, rng)])


def resample_indices(n: int, n_boot: int, rng: np.random.Generator):
    """Yield bootstrap index blocks [b, n] (with replacement) whose b's sum to n_boot; blocks hold
    at most ~`_MAX_BOOT_ELEMS` indices so memory stays bounded for large n."""
    chunk = max(1, _MAX_BOOT_ELEMS // max(n, 1))
    for s in range(0, n_boot, chunk):
        yield rng.integers(0, n, size=(min(chunk, n_boot - s), n))


def bootstrap_ci(x: Any, stat: Callable[..., Any] = np.mean, n_boot: int = 1000, seed: int = 0,
                 ci: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI (low, high) of stat over the non-NaN entries of x [N]; NaNs if empty."""
    z_value(ci)  # validates ci
    boots = bootstrap_distribution(x, stat, n_boot, seed)
    if boots.size == 0:
        return float("nan"), float("nan")
    a = (1.0 - ci) / 2.0
    lo, hi = np.quantile(boots, [a, 1.0 - a])
    return float(lo), float(hi)


def mean_std_ci(x: Any, n_boot: int = 1000, seed: int = 0, ci: float = 0.95, ddof: int = 1
                ) -> dict[str, float]:
    """NaN-aware summary of per-row values x [N].

    Returns {"mean", "std" (ddof), "stderr", "n" (non-NaN count), "n_nan", "ci_low", "ci_high"
    (percentile bootstrap CI of the mean)}. All floats are NaN when no value is finite.
    """
    raw = as_float_1d(x)
    a = raw[~np.isnan(raw)]
    lo, hi = bootstrap_ci(a, np.mean, n_boot, seed, ci)
    n = int(a.size)
    return {"mean": float(a.mean()) if n else float("nan"), "std": _std(a, ddof),
            "stderr": _std(a, ddof) / np.sqrt(n) if n else float("nan"),
            "n": n, "n_nan": int(raw.size - n), "ci_low": lo, "ci_high": hi}


def summarize_columns(columns: Mapping[str, Any], **kw) -> dict[str, dict[str, float]]:
    """`mean_std_ci` of every column ({name: [N] values}); bool columns give rates."""
    return {k: mean_std_ci(v, **kw) for k, v in columns.items()}


def paired_comparison(before: Any, after: Any, n_boot: int = 1000, seed: int = 0,
                      ci: float = 0.95, tie_tol: float = 0.0) -> dict[str, float]:
    """Paired before/after comparison on the same rows (e.g. original vs rewrite), d = after - before.

    before, after: [N] per-row scores; pairs with a NaN on either side are dropped.
    Returns {"n", "mean_before", "mean_after", "mean_diff", "std_diff", "stderr" (paired t standard
    error std(d, ddof=1)/sqrt(n)), "t_stat" (mean_diff/stderr), "ci_low"/"ci_high" (percentile
    bootstrap CI of mean_diff), "ci_normal_low"/"ci_normal_high" (mean_diff ± z·stderr),
    "wins"/"ties"/"losses" (counts of d > tol, |d| <= tol, d < -tol) and their rates}.
    """
    b, a = drop_nan_pairs(before, after)
    d = a - b
    n = int(d.size)
    nan = float("nan")
    mean_diff = float(d.mean()) if n else nan
    se = stderr_mean(d)
    lo, hi = bootstrap_ci(d, np.mean, n_boot, seed, ci)
    nlo, nhi = normal_ci(mean_diff, se, ci) if np.isfinite(se) else (nan, nan)
    wins, losses = int((d > tie_tol).sum()), int((d < -tie_tol).sum())
    ties = n - wins - losses
    rate = (lambda c: c / n if n else nan)
    return {"n": n, "mean_before": float(b.mean()) if n else nan,
            "mean_after": float(a.mean()) if n else nan, "mean_diff": mean_diff,
            "std_diff": _std(d, 1), "stderr": se,
            "t_stat": mean_diff / se if np.isfinite(se) and se > 0 else nan,
            "ci_low": lo, "ci_high": hi, "ci_normal_low": nlo, "ci_normal_high": nhi,
            "ci_level": ci, "wins": wins, "ties": ties, "losses": losses,
            "win_rate": rate(wins), "tie_rate": rate(ties), "loss_rate": rate(losses)}
