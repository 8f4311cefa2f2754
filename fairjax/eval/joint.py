"""Joint metrics of a rewrite: fairer *and* the same job *and* fluent (numpy only; never jax).

Per rewrite x of an original o (one pair per evaluated posting):

* `sim`        cos(e(x), e(o)) under the evaluation's sentence embedder, clipped to [0, 1]; a text
               without features (a zero vector) has similarity 0;
* `acc`        1 when the rewrite is fairer on both axes: its diversity reward is above its
               original's (`acc_diversity`) and it has no more masculine-coded words (Gaucher et
               al. 2011) than the original (`acc_coded`); else 0. A copy has acc 0 (not above);
* `fl`         fluency relative to the original, min(1, exp(nll(o) − nll(x))) = min(1, ppl(o) /
               ppl(x)) from the mean per-token NLLs under one language model: 1 for a rewrite
               at least as likely per token as its original, 1/2 when its perplexity is twice the
               original's; NaN when either NLL is missing;
* `j`          acc · sim · fl per rewrite; the system's J = mean(j) (the style-transfer J-score of
               Krishna et al. 2020, "Reformulating Unsupervised Style Transfer as Paraphrase
               Generation"). It is 0 whenever any factor is;
* `retrieved`  1 when the rewrite's nearest original (cosine) among ALL evaluated originals is its
               own (ties with its own count as found; a zero vector finds none); the mean is the
               identity-retrieval rate, chance = 1/N.

`joint_rows` computes the columns; `summarize_joint` gives their means with percentile-bootstrap
CIs over postings (`stats.mean_std_ci`; retrieval is resampled per rewrite with the set of
originals fixed) plus the before/after coded-word counts and the paired Δ diversity.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from fairjax.eval import stats

COLUMNS = ("sim", "acc", "acc_diversity", "acc_coded", "fl", "j", "retrieved")


def _unit_rows(x: Any) -> np.ndarray:
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def similarity(rewrite_vecs: Any, original_vecs: Any) -> np.ndarray:
    """[N] cosine of rewrite_vecs [N, D] to original_vecs [N, D], zero rows 0, clipped to [0, 1]."""
    a, b = _unit_rows(rewrite_vecs), _unit_rows(original_vecs)
    if a.shape != b.shape:
        raise ValueError(f"similarity: shapes {a.shape} and {b.shape} differ")
    return np.clip((a * b).sum(1), 0.0, 1.0)


def accuracy(div_rewrite: Any, div_original: Any, masc_rewrite: Any, masc_original: Any
             ) -> dict[str, np.ndarray]:
    """{"acc", "acc_diversity", "acc_coded"} [N] float 0/1 (NaN where a diversity value is NaN)."""
    dr, do = stats.as_float_1d(div_rewrite), stats.as_float_1d(div_original)
    mr, mo = stats.as_float_1d(masc_rewrite), stats.as_float_1d(masc_original)
    nan = np.isnan(dr) | np.isnan(do)
    a_div = np.where(nan, np.nan, (dr > do).astype(np.float64))
    a_coded = (mr <= mo).astype(np.float64)
    return {"acc": np.where(nan, np.nan, a_div * a_coded), "acc_diversity": a_div,
            "acc_coded": a_coded}


def fluency(nll_rewrite: Any, nll_original: Any) -> np.ndarray:
    """[N] min(1, exp(nll_original − nll_rewrite)) (module docstring); NaN where either is NaN."""
    r, o = stats.as_float_1d(nll_rewrite), stats.as_float_1d(nll_original)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.minimum(1.0, np.exp(o - r))


def identity_retrieval(rewrite_vecs: Any, original_vecs: Any, chunk: int = 1024) -> np.ndarray:
    """[N] 1.0 where rewrite i's most similar original (cosine over all N) is original i."""
    a, b = _unit_rows(rewrite_vecs), _unit_rows(original_vecs)
    n = a.shape[0]
    if b.shape[0] != n:
        raise ValueError(f"identity_retrieval: {n} rewrites for {b.shape[0]} originals")
    zero = ~np.any(a != 0, axis=1)
    out = np.zeros(n, np.float64)
    for s in range(0, n, chunk):
        sim = a[s:s + chunk] @ b.T  # [c, N]
        own = sim[np.arange(sim.shape[0]), np.arange(s, s + sim.shape[0])]
        out[s:s + chunk] = own >= sim.max(1) - 1e-9
    out[zero] = 0.0
    return out


def joint_rows(rewrite_vecs: Any, original_vecs: Any, div_rewrite: Any, div_original: Any,
               masc_rewrite: Any, masc_original: Any, nll_rewrite: Any, nll_original: Any
               ) -> dict[str, np.ndarray]:
    """{column: [N]} for COLUMNS (module docstring)."""
    sim = similarity(rewrite_vecs, original_vecs)
    acc = accuracy(div_rewrite, div_original, masc_rewrite, masc_original)
    fl = fluency(nll_rewrite, nll_original)
    return {"sim": sim, **acc, "fl": fl, "j": acc["acc"] * sim * fl,
            "retrieved": identity_retrieval(rewrite_vecs, original_vecs)}


def _ci(x: Any, n_boot: int, seed: int) -> dict[str, float]:
    s = stats.mean_std_ci(x, n_boot=n_boot, seed=seed)
    return {k: s[k] for k in ("mean", "ci_low", "ci_high", "n")}


def _paired(before: Any, after: Any, n_boot: int, seed: int) -> dict[str, float]:
    c = stats.paired_comparison(before, after, n_boot=n_boot, seed=seed)
    return {"before": c["mean_before"], "after": c["mean_after"], "mean_diff": c["mean_diff"],
            "ci_low": c["ci_low"], "ci_high": c["ci_high"], "n": c["n"]}


def summarize_joint(columns: Mapping[str, Any], n_boot: int = 1000, seed: int = 0,
                    coded: Optional[Mapping[str, Any]] = None,
                    diversity: Optional[tuple[Any, Any]] = None) -> dict[str, Any]:
    """Means with bootstrap CIs of the joint columns ({column: [N]}), `retrieval_chance` (1/N);
    `coded` {"masculine": (before [N], after [N]), "feminine": (...)} and `diversity` (before [N],
    after [N]) add their paired before/after means and Δ with CIs."""
    out: dict[str, Any] = {k: _ci(columns[k], n_boot, seed) for k in COLUMNS if k in columns}
    n = len(next(iter(columns.values()))) if columns else 0
    out["retrieval_chance"] = 1.0 / n if n else float("nan")
    for name, (before, after) in (coded or {}).items():
        out[f"{name}_words"] = _paired(before, after, n_boot, seed)
    if diversity is not None:
        out["delta_diversity"] = _paired(diversity[0], diversity[1], n_boot, seed)
    return out
