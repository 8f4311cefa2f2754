"""Selection rates, impact ratios, the four-fifths rule and demographic-share distances (numpy only).

This module must never import jax or flax (directly or transitively): it runs on machines without
an accelerator stack, on scores written by any generator. `fairjax.rewards.diversity` imports the
share / distance functions from here so that training reward and evaluation share one definition.

Candidate matching (FMs-at-work `impact_ratio_calc.py`, reference §4.5). For one text with
similarities `s` to M candidates:

* pool      P = the `pool_k` candidates with the highest similarity (50 upstream),
* selected  S = the `select_k` highest of those (10 upstream),
* selection rate  SR_g = |S ∩ g| / |P ∩ g|,
* impact ratio    IR_g = SR_g / max_g' SR_g'   (EEOC four-fifths rule: IR_g < 0.8 is adverse impact).

Differences from upstream, on purpose:

* **NaN, not 0, for a group absent from the pool.** Upstream writes SR_g = 0 (hence IR_g = 0),
  which reads as "this group was never selected" — maximal adverse impact — when the group simply
  had no member to select. We return NaN; aggregates use nan-aware means and report how many texts
  had the group at all. `violates_four_fifths` treats NaN as "no violation".
* **Deterministic ties.** Candidates with equal similarity are ranked by candidate index (lower index
  first), both for the pool and for the selected set; upstream used `np.argsort(...)[::-1]`, whose
  tie order is unspecified (and reversed). `top_k_indices` is exact, not approximate.
* **Excluded candidates.** A similarity of `-inf` means "not eligible" (e.g. removed by a location
  filter): such candidates never enter the pool, so the pool can be smaller than `pool_k`.

Distances between realised shares p and target shares q (both [..., G], summing to 1):

* `paper_wasserstein(p, q)`: what upstream computed, `scipy.stats.wasserstein_distance(q, p)`,
  which treats the two share vectors as *samples of values*, not as weights over groups. For equal
  lengths this is the mean absolute difference of the **sorted** values; for two groups it is
  `|min(p) - min(q)|`. It is symmetric under relabelling: 70/30 and 30/70 score the same, so it cannot
  tell which group is over-represented (reference §4.4 "Caveat" and §8.4). Kept only to reproduce
  published numbers.
* `signed_tv(p, q)`: total variation `0.5 * sum_g |p_g - q_g|` between the share vectors, label-aware
  ("signed": swapping the groups changes the distance unless the target is symmetric). The default.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from fairjax.eval.stats import resample_indices

FOUR_FIFTHS = 0.8
DISTANCES = ("signed_tv", "paper")


# --------------------------------------------------------------------------- ranking
def top_k_indices(similarity: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k candidate indices per row, best first, ties by lower candidate index.

    similarity: [N, M] float (NaN not allowed; -inf = ineligible, still ranked last).
    Returns [N, min(k, M)] int64. Uses `np.argpartition` (O(M) per row) and resolves rows whose
    k-th value is tied across the partition boundary with a stable sort of that row only.
    """
    sim = np.asarray(similarity)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be [n_texts, n_candidates], got shape {sim.shape}")
    n, m = sim.shape
    k = min(int(k), m)
    if k <= 0 or n == 0:
        return np.zeros((n, max(k, 0)), np.int64)
    if np.isnan(sim).any():
        raise ValueError("similarity contains NaN (use -inf to exclude a candidate)")
    if k < m:
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(sim, part, axis=1)
        kth = vals.min(axis=1)
        # Ambiguous rows: more candidates share the boundary value than made it into the partition.
        n_ge = (sim >= kth[:, None]).sum(axis=1)
        for r in np.nonzero(n_ge > k)[0]:
            part[r] = np.argsort(-sim[r], kind="stable")[:k]
    else:
        part = np.broadcast_to(np.arange(m), (n, m)).copy()
    vals = np.take_along_axis(sim, part, axis=1)
    order = np.lexsort((part, -vals), axis=-1)  # primary: similarity desc; secondary: index asc
    return np.take_along_axis(part, order, axis=1).astype(np.int64)


# --------------------------------------------------------------------------- groups
def encode_groups(groups: Sequence[Any], group_names: Optional[Sequence[str]] = None,
                  ) -> tuple[np.ndarray, list[str]]:
    """Labels -> (codes [M] int64, names). Unlabelled entries (None, '', NaN) get code -1.

    `group_names` fixes the group order (and lets a group absent from `groups` still be reported);
    a label not in `group_names` raises ValueError naming it and its position.
    """
    labels = ["" if _missing(g) else str(g) for g in groups]
    if group_names is None:
        names = sorted({g for g in labels if g})
    else:
        names = [str(g) for g in group_names]
    index = {g: i for i, g in enumerate(names)}
    codes = np.full(len(labels), -1, np.int64)
    for j, g in enumerate(labels):
        if not g:
            continue
        if g not in index:
            raise ValueError(f"group label {g!r} at candidate {j} is not one of {names}")
        codes[j] = index[g]
    return codes, names


def _missing(g: Any) -> bool:
    return g is None or (isinstance(g, str) and not g) or (isinstance(g, float) and np.isnan(g))


def member_counts(top_idx: np.ndarray, codes: np.ndarray, n_groups: int,
                  valid: Optional[np.ndarray] = None) -> np.ndarray:
    """Per-row count of each group among the given candidates.

    top_idx: [N, k] candidate indices; codes: [M] group codes (-1 = unlabelled, not counted);
    valid: [N, k] bool (False = not a member, e.g. an ineligible candidate). Returns [N, G] int64.
    """
    c = codes[top_idx]  # [N, k]
    ok = c >= 0 if valid is None else (c >= 0) & valid
    n = top_idx.shape[0]
    flat = np.where(ok, c + n_groups * np.arange(n)[:, None], -1)[ok]
    return np.bincount(flat, minlength=n * n_groups).reshape(n, n_groups)


def group_shares(counts: np.ndarray) -> np.ndarray:
    """Counts [..., G] -> shares [..., G] (rows with no labelled member are all NaN)."""
    counts = np.asarray(counts, np.float64)
    tot = counts.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, counts / np.where(tot > 0, tot, 1), np.nan)


# --------------------------------------------------------------------------- distances
def paper_wasserstein(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Upstream's distance: scipy `wasserstein_distance(q, p)` on share *values*.

    p, q: [..., G] (broadcastable). With equal sample counts, W1 between the empirical distributions
    of the values is the mean |sort(p)_i - sort(q)_i|; for G=2 it equals |min(p) - min(q)|.
    Label-blind (see module docstring). Returns [...]; NaN where p or q has NaN.
    """
    p, q = np.broadcast_arrays(np.asarray(p, np.float64), np.asarray(q, np.float64))
    return np.abs(np.sort(p, axis=-1) - np.sort(q, axis=-1)).mean(axis=-1)


def signed_tv(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Total variation 0.5 * sum_g |p_g - q_g| between share vectors [..., G] -> [...] in [0, 1]."""
    p, q = np.broadcast_arrays(np.asarray(p, np.float64), np.asarray(q, np.float64))
    return 0.5 * np.abs(p - q).sum(axis=-1)


def share_distance(p: np.ndarray, q: np.ndarray, mode: str = "signed_tv") -> np.ndarray:
    """Dispatch on `mode` in DISTANCES ('signed_tv' default, 'paper')."""
    if mode == "signed_tv":
        return signed_tv(p, q)
    if mode == "paper":
        return paper_wasserstein(p, q)
    raise ValueError(f"distance mode {mode!r}; expected one of {list(DISTANCES)}")


# --------------------------------------------------------------------------- impact ratios
def selection_counts(top_idx: np.ndarray, valid: np.ndarray, codes: np.ndarray, n_groups: int,
                     select_k: int) -> tuple[np.ndarray, np.ndarray]:
    """(selected [N, G], pool [N, G]) member counts per group: pool = the valid slots of top_idx
    [N, k] (best first), selected = its first `select_k` valid slots."""
    rank = np.cumsum(valid, axis=1)  # valid slots come first (ineligible ones are -inf, ranked last)
    selected = valid & (rank <= select_k)
    return member_counts(top_idx, codes, n_groups, selected), member_counts(top_idx, codes, n_groups, valid)


def rates_from_ranking(top_idx: np.ndarray, valid: np.ndarray, codes: np.ndarray,
                       names: Sequence[str], select_k: int) -> dict[str, np.ndarray]:
    """SR/IR from a ranked pool (the core of `impact_ratios`, reused by the diversity reward).

    top_idx: [N, k] pool candidate indices, best first; valid: [N, k] bool (False = ineligible slot);
    codes: [M] group codes; select_k: the selected set is the first `select_k` valid pool slots.
    Returns {"sr_<g>": [N], "ir_<g>": [N]} float64 (NaN where g is absent from the pool).
    """
    sel_n, pool_n = selection_counts(top_idx, valid, codes, len(names), select_k)
    with np.errstate(invalid="ignore", divide="ignore"):
        sr = np.where(pool_n > 0, sel_n / np.maximum(pool_n, 1), np.nan)
        best = np.full(sr.shape[0], np.nan)
        has = ~np.isnan(sr).all(axis=1)
        best[has] = np.nanmax(sr[has], axis=1)
        ir = sr / best[:, None]
    out: dict[str, np.ndarray] = {}
    for i, name in enumerate(names):
        out[f"sr_{name}"] = sr[:, i]
    for i, name in enumerate(names):
        out[f"ir_{name}"] = ir[:, i]
    return out


def impact_ratios(similarity: np.ndarray, groups: Sequence[Any], pool_k: int = 50,
                  select_k: int = 10, group_names: Optional[Sequence[str]] = None,
                  ) -> dict[str, np.ndarray]:
    """Selection rates and impact ratios per group for every text.

    similarity: [n_texts, n_candidates] (higher = better match; -inf = ineligible candidate);
    groups: [n_candidates] labels (None/'' = unlabelled, never counted).
    Pool = top `pool_k` eligible candidates, selected = its top `select_k`; ties by lower index.
    Returns {"sr_<g>": [n_texts], "ir_<g>": [n_texts]} float64; NaN where g is absent from the pool
    (upstream wrote 0 there, which reads as adverse impact; see module docstring).
    """
    sim = np.asarray(similarity)
    if sim.ndim != 2 or sim.shape[1] != len(groups):
        raise ValueError(f"similarity must be [n_texts, n_candidates={len(groups)}], got {sim.shape}")
    if not 0 < select_k <= pool_k:
        raise ValueError(f"need 0 < select_k <= pool_k, got select_k={select_k}, pool_k={pool_k}")
    codes, names = encode_groups(groups, group_names)
    top = top_k_indices(sim, pool_k)
    valid = np.isfinite(np.take_along_axis(sim, top, axis=1))
    return rates_from_ranking(top, valid, codes, names, select_k)


def violates_four_fifths(ir: np.ndarray, threshold: float = FOUR_FIFTHS) -> np.ndarray:
    """IR < threshold (0.8), NaN-aware: NaN (group absent) is not a violation. Same shape, bool."""
    ir = np.asarray(ir, np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(ir), False, ir < threshold)


def four_fifths_flags(rates: Mapping[str, np.ndarray], threshold: float = FOUR_FIFTHS,
                      ) -> dict[str, np.ndarray]:
    """{"violates_<g>": [N] bool per group, "violates_any": [N] bool} from an `impact_ratios` dict."""
    flags = {f"violates_{k[3:]}": violates_four_fifths(v, threshold)
             for k, v in rates.items() if k.startswith("ir_")}
    if flags:
        flags["violates_any"] = np.any(np.stack(list(flags.values())), axis=0)
    return flags


# --------------------------------------------------------------------------- corpus tables
FOUR_FIFTHS_NOTE = ("The four-fifths rule (impact ratio < 0.8 flags adverse impact) is a US "
                    "employment-law heuristic from the EEOC Uniform Guidelines (29 CFR 1607.4(D)), "
                    "not a statistical test and not the legal standard outside the US.")


def _table_stats(sel: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """[..., G] pooled counts -> [..., G + 3]: per-group rate, overall, difference, ratio."""
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(pool > 0, sel / np.maximum(pool, 1), np.nan)
        overall = sel.sum(-1) / np.maximum(pool.sum(-1), 1)
        any_ = ~np.isnan(rate).all(-1)
        hi = np.where(any_, np.nanmax(np.where(any_[..., None], rate, 0.0), -1), np.nan)
        lo = np.where(any_, np.nanmin(np.where(any_[..., None], rate, 0.0), -1), np.nan)
        ratio = np.where(hi > 0, lo / np.where(hi > 0, hi, 1.0), np.nan)
    return np.concatenate([rate, overall[..., None], (hi - lo)[..., None], ratio[..., None]], -1)


def selection_table(selected: Any, pool: Any, names: Sequence[str], n_boot: int = 1000,
                    seed: int = 0, ci: float = 0.95) -> dict[str, Any]:
    """Corpus selection rates in the shape of fairlearn's `MetricFrame(metrics=selection_rate)`.

    selected, pool: [N, G] per-posting counts of selected / matched candidates per group (a
    candidate slot of a posting's pool is one decision, selected or not). Pooled over postings:
    by_group[g] = Σ selected_g / Σ pool_g (MetricFrame.by_group), overall = Σ selected / Σ pool,
    difference = max_g − min_g, ratio = min_g / max_g (MetricFrame.ratio(), fairlearn's
    demographic_parity_ratio; the corpus impact ratio). Groups with no pooled member are NaN and
    left out of min/max. CIs: percentile bootstrap over postings (clusters), `n_boot` resamples.
    """
    sel, pl = np.asarray(selected, np.float64), np.asarray(pool, np.float64)
    if sel.shape != pl.shape or sel.ndim != 2 or sel.shape[1] != len(names):
        raise ValueError(f"selection_table needs selected and pool of shape [N, {len(names)}], got "
                         f"{sel.shape} and {pl.shape}")
    if (sel > pl).any() or (sel < 0).any():
        raise ValueError("selection_table: selected counts must lie in [0, pool counts]")
    point = _table_stats(sel.sum(0), pl.sum(0))
    n = sel.shape[0]
    boots = np.concatenate([_table_stats(sel[i].sum(1), pl[i].sum(1))
                            for i in resample_indices(n, n_boot, np.random.default_rng(seed))]) if n else np.empty((0, point.size))
    a = (1.0 - ci) / 2.0

    def entry(j: int) -> dict[str, Any]:
        col = boots[:, j][~np.isnan(boots[:, j])] if boots.size else np.empty(0)
        lo, hi = np.quantile(col, [a, 1 - a]) if col.size else (np.nan, np.nan)
        return {"value": float(point[j]), "ci_low": float(lo), "ci_high": float(hi)}

    g = len(names)
    by_group = {name: {**entry(j), "n_selected": int(sel[:, j].sum()), "n_pool": int(pl[:, j].sum())}
                for j, name in enumerate(names)}
    ratio = entry(g + 2)
    return {"metric": "selection_rate", "by_group": by_group, "overall": entry(g),
            "difference": entry(g + 1), "ratio": ratio,
            "four_fifths_violation": bool(ratio["value"] < FOUR_FIFTHS) if np.isfinite(ratio["value"]) else None,
            "n_postings": int(n), "ci_level": ci}
