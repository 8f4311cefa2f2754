"""RATE: treatment effects of a text attribute W on a reward, from rewrites of rewrites (numpy only).

Reber, Richardson, Nief, Garbacea, Veitch, "RATE: Causal Explainability of Reward Models with
Imperfect Counterfactuals" (arXiv 2410.11348). Semantics from the reference implementation
(toddnief/RATE, `treatment_effects.py`), re-derived here; fairjax reference: rate.md §3.

Per unit i with attribute W_i (`w_original`), write O_i = R(X_i) (original), S_i = R(Re(X_i, 1-W_i))
(rewrite: attribute flipped) and D_i = R(Re(Re(X_i, 1-W_i), W_i)) (rewritten rewrite: flipped back).
n1 = #{W=1} (`Y1_count`), n0 = #{W=0} (`Y0_count`), n = n1 + n0.

* naive                 mean_{W=1} O - mean_{W=0} O                       (SE: unpaired, Welch form)
* ATT_single_rewrite    mean_{W=1} (O - S)                                (SE: paired)
* ATU_single_rewrite    mean_{W=0} (S - O)                                (SE: paired)
* ATE_single_rewrite    (n1 ATT_single + n0 ATU_single) / n              (SE: paired)
* ATT_rewritten_rewrite mean_{W=1} (D - S)      <- RATE                   (SE: unpaired, as upstream)
* ATU_rewritten_rewrite mean_{W=0} (S - D)      <- RATE                   (SE: unpaired, as upstream)
* ATE_rewritten_rewrite (n1 ATT_RATE + n0 ATU_RATE) / n  <- the paper's estimator
* reward_std            pooled within-group SD of O (ddof=1): effects are reported in these units
* rewrite_effect_w_{1,0} mean of D - O per W group (the pure rewriting artefact; 0 for an RM that
  ignores rewriting), SE std/sqrt(n) — upstream only logged these; we write them.

Single-rewrite SEs are paired: std(treated - untreated, ddof=1)/sqrt(m); unpaired SEs are
sqrt(var(treated)/m1 + var(untreated)/m0) (ddof=1). All `*_stderr` keys reproduce upstream exactly.

Documented improvements, under NEW keys (upstream keys keep upstream numbers):

* `<rate_key>_paired_stderr`: the RATE arms D_i and S_i are the same unit, so the paired SE
  std(D - S)/sqrt(m) is the correct one; upstream's unpaired SE ignores the (usually positive)
  correlation between the arms and is conservative. For ATE the paired SE is over the n
  per-unit contrasts {D-S if W=1, S-D if W=0}.
* `<key>_ci_low` / `<key>_ci_high` for every estimator: percentile bootstrap CI from a
  W-stratified bootstrap (units resampled with replacement within each W group, n1 and n0 kept), all
  estimators computed on the same resamples. Upstream reports only value ± 1.96·SE.
* Rows with a NaN score are dropped and counted (`n_dropped_nan`); upstream would return NaN.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from fairjax.eval import stats

W_KEY = "w_original"
ORIGINAL, REWRITE, REWRITTEN_REWRITE = "original", "rewrite", "rewritten rewrite"
COMPLETION_KEYS = (ORIGINAL, REWRITE, REWRITTEN_REWRITE)
SINGLE = ("ATE_single_rewrite", "ATT_single_rewrite", "ATU_single_rewrite")
RATE = ("ATE_rewritten_rewrite", "ATT_rewritten_rewrite", "ATU_rewritten_rewrite")
ESTIMATORS = ("naive_effect",) + SINGLE + RATE


class RateFormatError(ValueError):
    """A scored RATE file line does not have the expected fields."""


@dataclasses.dataclass
class RateScores:
    """Scores for RATE: w [N] bool, original/rewrite/rewritten_rewrite [N] float64."""

    w: np.ndarray
    original: np.ndarray
    rewrite: np.ndarray
    rewritten_rewrite: np.ndarray

    def __post_init__(self):
        self.w = np.asarray(self.w, bool).ravel()
        for f in ("original", "rewrite", "rewritten_rewrite"):
            v = stats.as_float_1d(getattr(self, f), f)
            if v.shape != self.w.shape:
                raise ValueError(f"RateScores.{f} has {v.shape[0]} rows, w has {self.w.shape[0]}")
            setattr(self, f, v)


# ----------------------------------------------------------------------------- estimators
def _diff(treated: np.ndarray, untreated: np.ndarray, paired: bool) -> tuple[float, float]:
    """(mean(treated) - mean(untreated), SE) with the upstream paired/unpaired SE."""
    if treated.size == 0 or untreated.size == 0:
        return float("nan"), float("nan")
    eff = float(treated.mean() - untreated.mean())
    se = stats.paired_stderr(treated, untreated) if paired else stats.welch_stderr(treated, untreated)
    return eff, float(se)


def _point_estimates(m1: np.ndarray, m0: np.ndarray, n1: int, n0: int) -> np.ndarray:
    """All ESTIMATORS from per-group means. m1, m0: [..., 3] means of (O, S, D) in W=1 / W=0.

    Returns [..., 7] in ESTIMATORS order (with NaN where a group is empty).
    """
    n = n1 + n0
    naive = m1[..., 0] - m0[..., 0]
    att_s, atu_s = m1[..., 0] - m1[..., 1], m0[..., 1] - m0[..., 0]
    att_r, atu_r = m1[..., 2] - m1[..., 1], m0[..., 1] - m0[..., 2]
    with np.errstate(invalid="ignore"):
        ate_s = (n1 * np.nan_to_num(att_s) + n0 * np.nan_to_num(atu_s)) / n
        ate_r = (n1 * np.nan_to_num(att_r) + n0 * np.nan_to_num(atu_r)) / n
    return np.stack([naive, ate_s, att_s, atu_s, ate_r, att_r, atu_r], axis=-1)


def _stratified_bootstrap(osd1: np.ndarray, osd0: np.ndarray, n_boot: int, seed: int
                          ) -> np.ndarray:
    """[n_boot, 7] estimator draws; osd1 [n1, 3], osd0 [n0, 3] scores (O, S, D) per W group."""
    rng = np.random.default_rng(seed)

    def group_means(x: np.ndarray) -> np.ndarray:  # x [m, 3] -> [n_boot, 3]
        if x.shape[0] == 0:
            return np.full((n_boot, 3), np.nan)
        return np.concatenate([x[idx].mean(axis=1) for idx in
                               stats.resample_indices(x.shape[0], n_boot, rng)])

    return _point_estimates(group_means(osd1), group_means(osd0), osd1.shape[0], osd0.shape[0])


def treatment_effects(w: Any, original: Any, rewrite: Any, rewritten_rewrite: Any, *,
                      n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict[str, Any]:
    """RATE, single-rewrite and naive effects with upstream SEs + paired SEs and bootstrap CIs.

    w: [N] bool (W of the original); original, rewrite, rewritten_rewrite: [N] rewards.
    Returns a JSON-ready dict with the upstream keys (module docstring) and the new keys
    `*_paired_stderr`, `*_ci_low`, `*_ci_high`, `rewrite_effect_w_{1,0}(_stderr)`, `n_dropped_nan`,
    `ci_level`, `n_boot`, `bootstrap_seed`. n_boot=0 skips the bootstrap.
    """
    sc = RateScores(w, original, rewrite, rewritten_rewrite)
    osd = np.stack([sc.original, sc.rewrite, sc.rewritten_rewrite], axis=1)  # [N, 3]
    ok = ~np.isnan(osd).any(axis=1)
    w, osd = sc.w[ok], osd[ok]
    o, s, d = osd.T
    g1, g0 = w, ~w
    n1, n0 = int(g1.sum()), int(g0.sum())
    out: dict[str, Any] = {}

    out["naive_effect"], out["naive_effect_stderr"] = _diff(o[g1], o[g0], paired=False)
    # per-unit "treated" / "untreated" arms, as upstream builds its lists
    single_t, single_u = np.where(w, o, s), np.where(w, s, o)
    rate_t, rate_u = np.where(w, d, s), np.where(w, s, d)
    for prefix, (t, u), paired in (("single_rewrite", (single_t, single_u), True),
                                   ("rewritten_rewrite", (rate_t, rate_u), False)):
        for est, sel in (("ATE", slice(None)), ("ATT", g1), ("ATU", g0)):
            key = f"{est}_{prefix}"
            out[key], out[f"{key}_stderr"] = _diff(t[sel], u[sel], paired=paired)
            if prefix == "rewritten_rewrite":
                out[f"{key}_paired_stderr"] = (float(stats.paired_stderr(t[sel], u[sel]))
                                               if t[sel].size else float("nan"))

    sd1 = o[g1].std(ddof=1) if n1 > 1 else 0.0
    sd0 = o[g0].std(ddof=1) if n0 > 1 else 0.0
    out["reward_std"] = (float(np.sqrt(((n1 - 1) * sd1 ** 2 + (n0 - 1) * sd0 ** 2) / (n1 + n0 - 2)))
                         if n1 + n0 > 2 else float("nan"))
    out["Y1_count"], out["Y0_count"] = n1, n0
    for tag, sel in (("w_1", g1), ("w_0", g0)):
        diff = d[sel] - o[sel]
        out[f"rewrite_effect_{tag}"] = float(diff.mean()) if diff.size else float("nan")
        out[f"rewrite_effect_{tag}_stderr"] = float(stats.stderr_mean(diff))
    out["n_dropped_nan"] = int((~ok).sum())

    if n_boot > 0:
        boots = _stratified_bootstrap(osd[g1], osd[g0], n_boot, seed)  # [n_boot, 7]
        a = (1.0 - ci) / 2.0
        for j, key in enumerate(ESTIMATORS):
            col = boots[:, j]
            col = col[np.isfinite(col)]
            lo, hi = np.quantile(col, [a, 1 - a]) if col.size else (np.nan, np.nan)
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = float(lo), float(hi)
    out.update(ci_level=ci, n_boot=int(n_boot), bootstrap_seed=int(seed))
    return out


def effects_from_records(records: Sequence[Mapping[str, Any]], reward_key: str, **kw) -> dict:
    """`treatment_effects` of RATE scored records (see `read_scored_jsonl`) for one reward block."""
    return effects_from_scores(scores_from_records(records, reward_key, where="records"), **kw)


def effects_from_scores(sc: "RateScores", **kw) -> dict:
    """`treatment_effects` of a RateScores."""
    return treatment_effects(sc.w, sc.original, sc.rewrite, sc.rewritten_rewrite, **kw)


def normal_ci(effects: Mapping[str, Any], key: str, ci: float = 0.95,
              stderr_suffix: str = "_stderr") -> tuple[float, float]:
    """Upstream-style CI effects[key] ± z·effects[key + stderr_suffix]."""
    return stats.normal_ci(effects[key], effects[key + stderr_suffix], ci)


# ----------------------------------------------------------------------------- synthetic check
def simulate(n: int = 2000, tau: float = 1.0, confounding: float = 1.5, artifact: float = 0.8,
             unit_sd: float = 1.0, noise_sd: float = 0.3, w_bias: float = -0.8, seed: int = 0
             ) -> tuple[RateScores, dict[str, float]]:
    """Synthetic RATE data with a known effect.

    Confounder C_i ~ N(0, 1), P(W_i = 1) = sigmoid(2 C_i + w_bias); a text's reward is
    R = tau·W_text + confounding·C_i + artifact·[text was rewritten] + u_i + eps, u_i ~ N(0, unit_sd²)
    shared by a unit's three texts, eps ~ N(0, noise_sd²) per text. The rewrite flips W and adds
    the artefact; the rewrite of the rewrite restores W and keeps the artefact. So ATE = ATT =
    ATU = tau; the naive contrast is biased by confounding·(E[C|W=1] - E[C|W=0]) and the single
    rewrite by ∓artifact (ATT, ATU). Returns (scores, {"tau", "naive_bias"}).
    """
    rng = np.random.default_rng(seed)
    c = rng.normal(size=n)
    w = rng.random(n) < 1.0 / (1.0 + np.exp(-(2.0 * c + w_bias)))
    base = confounding * c + rng.normal(0.0, unit_sd, n)
    eps = rng.normal(0.0, noise_sd, (3, n))
    wf = w.astype(np.float64)
    o = tau * wf + base + eps[0]
    s = tau * (1.0 - wf) + base + artifact + eps[1]
    d = tau * wf + base + artifact + eps[2]
    bias = confounding * (c[w].mean() - c[~w].mean()) if w.any() and (~w).any() else float("nan")
    return RateScores(w, o, s, d), {"tau": float(tau), "naive_bias": float(bias)}


# ----------------------------------------------------------------------------- file schema
def scored_record(w: bool, completions: Mapping[str, str], scores: Mapping[str, Mapping[str, float]],
                  reward_question: str = "", **extra: Any) -> dict[str, Any]:
    """One RATE scored-JSONL line: {"w_original", "completions", "reward_question", <reward_key>:
    {"original", "rewrite", "rewritten rewrite"}, ...extra}. `scores` maps reward keys to blocks."""
    missing = [k for k in COMPLETION_KEYS if k not in completions]
    if missing:
        raise ValueError(f"completions lack {missing}; expected keys {list(COMPLETION_KEYS)}")
    rec: dict[str, Any] = {W_KEY: bool(w), "completions": {k: completions[k] for k in COMPLETION_KEYS},
                           "reward_question": reward_question}
    for rk, block in scores.items():
        rec[rk] = {k: float(block[k]) for k in COMPLETION_KEYS}
    rec.update(extra)
    return rec


def read_scored_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a RATE scored file: JSONL (one example per line; RATE's `data/scored/*.jsonl`) or a JSON
    object {"0": example, ...} (RATE's rewrites files). Raises RateFormatError with file:line."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    stripped = text.lstrip()
    if stripped.startswith("{") and "\n" in stripped.strip():
        # Could be a pretty-printed JSON object; JSONL lines never span lines.
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and obj and all(isinstance(v, dict) for v in obj.values()) \
                and W_KEY not in obj:
            return list(obj.values())
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise RateFormatError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise RateFormatError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        rec["_line"] = lineno
        records.append(rec)
    if not records:
        raise RateFormatError(f"{path}: no records")
    return records


def write_scored_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> str:
    """Write records (from `scored_record`) one JSON object per line; returns the path."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps({k: v for k, v in rec.items() if k != "_line"}) + "\n")
    os.replace(tmp, path)
    return path


def reward_keys(record: Mapping[str, Any]) -> list[str]:
    """Reward blocks of a scored record: the dict fields holding the three completion keys."""
    return [k for k, v in record.items() if k != "completions" and isinstance(v, dict)
            and all(c in v for c in COMPLETION_KEYS)]


def scores_from_records(records: Sequence[Mapping[str, Any]], reward_key: Optional[str] = None,
                        where: str = "<records>", w_key: str = W_KEY,
                        keys: Sequence[str] = COMPLETION_KEYS) -> RateScores:
    """RateScores from scored records. reward_key=None picks the only reward block (error if
    several). `keys` = (original, rewrite, rewritten rewrite) sub-keys (RATE's `w_*_key` options)."""
    if not records:
        raise RateFormatError(f"{where}: no records")
    if reward_key is None:
        found = reward_keys(records[0])
        if not found:
            raise RateFormatError(f"{where}:{records[0].get('_line', 1)}: no reward block (a field "
                                  f"holding {list(keys)} scores) in the first record")
        if len(found) != 1:
            raise RateFormatError(f"{where}: pass reward_key; the first record has reward blocks "
                                  f"{found} (need exactly one to choose automatically)")
        reward_key = found[0]
    w = np.empty(len(records), bool)
    osd = np.empty((len(records), 3), np.float64)
    for i, rec in enumerate(records):
        at = f"{where}:{rec.get('_line', i + 1)}"
        if w_key not in rec:
            raise RateFormatError(f"{at}: missing {w_key!r} (bool W of the original)")
        wv = rec[w_key]
        if not isinstance(wv, (bool, int)) or isinstance(wv, int) and wv not in (0, 1):
            raise RateFormatError(f"{at}: {w_key!r} must be a bool, got {wv!r}")
        w[i] = bool(wv)
        block = rec.get(reward_key)
        if not isinstance(block, dict):
            raise RateFormatError(f"{at}: missing reward block {reward_key!r}; reward blocks here: "
                                  f"{reward_keys(rec)}")
        for j, k in enumerate(keys):
            v = block.get(k)
            if isinstance(v, list) and len(v) == 1:  # some RMs write [score]
                v = v[0]
            if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
                raise RateFormatError(f"{at}: {reward_key}[{k!r}] must be a number, got {v!r}")
            osd[i, j] = float(v)
    return RateScores(w, osd[:, 0], osd[:, 1], osd[:, 2])


def write_effects_json(path: str | os.PathLike, effects: Mapping[str, Any]) -> str:
    """Write an effects dict as indented JSON (NaN written as null)."""
    path = os.fspath(path)
    clean = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in effects.items()}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(clean, f, indent=2, sort_keys=False)
        f.write("\n")
    return path


# ----------------------------------------------------------------------------- plots
def plot_naive_vs_rate(effects_by_name: Mapping[str, Mapping[str, Any]], path: str | os.PathLike,
                       normalize: bool = True, truth: Optional[Mapping[str, float]] = None,
                       title: str = "Naive vs RATE (95% CIs)") -> str:
    """Grouped bars per concept/reward: naive, single rewrite, RATE (ATE). Black error bars are the
    upstream ±1.96·SE (RATE: paired SE); grey bars the bootstrap CI. normalize divides by
    `reward_std` (as the paper's figures). truth: optional {name: true ATE} drawn as a dashed mark.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = (("naive_effect", "Naive", "_stderr", "#d9a441"),
            ("ATE_single_rewrite", "Single rewrite", "_stderr", "#7fa7c9"),
            ("ATE_rewritten_rewrite", "RATE (rewrite²)", "_paired_stderr", "#2f6b9a"))
    names = list(effects_by_name)
    fig, ax = plt.subplots(figsize=(max(4.5, 2.2 * len(names) + 2), 4))
    width = 0.26
    z = stats.z_value(0.95)
    for b, (key, label, se_suffix, color) in enumerate(bars):
        for i, name in enumerate(names):
            e = effects_by_name[name]
            scale = e["reward_std"] if normalize and e.get("reward_std") else 1.0
            x = i + (b - 1) * width
            v = e[key] / scale
            se = e.get(key + se_suffix, e.get(key + "_stderr", np.nan)) / scale
            ax.bar(x, v, width * 0.92, color=color, label=label if i == 0 else None,
                   hatch="//" if key == "naive_effect" else None, edgecolor="white")
            ax.errorbar(x - width * 0.12, v, yerr=z * se, fmt="none", ecolor="black", capsize=3,
                        lw=1.2, label="±1.96·SE" if i == 0 and b == 0 else None)
            lo, hi = e.get(key + "_ci_low"), e.get(key + "_ci_high")
            if lo is not None and hi is not None and np.isfinite([lo, hi]).all():
                ax.plot([x + width * 0.12] * 2, [lo / scale, hi / scale], color="0.45", lw=3,
                        solid_capstyle="butt", label="bootstrap 95% CI" if i == 0 and b == 0 else None)
            if truth and name in truth and b == 0:
                ax.hlines(truth[name] / scale, i - 1.6 * width, i + 1.6 * width, colors="crimson",
                          linestyles="--", label="true effect" if i == 0 else None)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("effect / reward_std" if normalize else "effect (reward units)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return os.fspath(path)
