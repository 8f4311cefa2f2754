"""What a rewrite keeps of its original posting (numpy + sacrebleu; never jax).

Per rewrite vs its original (one pair per prompt):

* `cosine`       cos(e(rewrite), e(original)) under the reward scorer's embedder; the vectors are
                 computed where the embedder lives and passed in ([N, D] each);
* `chrf`         sentence chrF (sacrebleu's CHRF, character 6-grams, β = 2) in [0, 100];
* `skills_kept`  share of the original's skill/technology terms (`fairjax.data.jobs.technologies_in`)
                 still named by the rewrite; NaN when the original names none;
* `header_kept`  share of the original's header fields (company, location, remote/onsite, title;
                 `extract_fields`) the rewrite keeps: the value appears (case-insensitive) in the
                 rewrite; remote = "remote" appears, onsite = "on-site/onsite/in office/no remote"
                 appears; NaN when no field was found in the original;
* `length_ratio` characters of the rewrite / characters of the original.

`faithful_mask` is the faithfulness test of a rewrite (cosine ≥ τ and every header field kept);
`best_faithful` / `worst_faithful` pick, per prompt, the highest / lowest reward among its faithful
candidates (best-of-n decoding, DPO pairs from rewrite-augmented data).

`length_controlled_difference` compares two systems on the same prompts with length as a covariate
(OLS y = a + δ·[system b] + β·log(1 + chars)) and within length bins, both with paired bootstrap CIs
(prompts resampled, `stats.resample_indices`).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from fairjax.data.jobs import extract_fields, technologies_in
from fairjax.eval import stats

METRICS = ("cosine", "chrf", "skills_kept", "header_kept", "length_ratio")
HEADER_FIELDS = ("company", "location", "remote", "title")
_ONSITE = re.compile(r"\bon[- ]?site\b|\bin[- ]office\b|\bno remote\b|\bnot remote\b", re.IGNORECASE)
_REMOTE = re.compile(r"\bremote\b", re.IGNORECASE)


def cosine_rows(a: Any, b: Any) -> np.ndarray:
    """Row-wise cosine of a [N, D] and b [N, D] -> [N]; NaN where a row has zero norm."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"cosine_rows needs two [N, D] arrays of one shape, got {a.shape} and {b.shape}")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((na > 0) & (nb > 0), (a * b).sum(1) / (na * nb), np.nan)


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Sentence chrF of each hypothesis against its one reference, [N] in [0, 100] (sacrebleu)."""
    from sacrebleu.metrics import CHRF

    if len(hypotheses) != len(references):
        raise ValueError(f"chrf: {len(hypotheses)} hypotheses for {len(references)} references")
    metric = CHRF()
    return np.array([metric.sentence_score(h, [r]).score for h, r in zip(hypotheses, references)],
                    np.float64)


def skills_kept(original: str, rewrite: str) -> float:
    """Share of the original's technology terms that the rewrite names (NaN: the original has none)."""
    terms = technologies_in(original)
    if not terms:
        return float("nan")
    kept = set(technologies_in(rewrite))
    return sum(t in kept for t in terms) / len(terms)


def header_fields(original: str, fields: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The header fields of a posting: `fields` (record metadata) where given, else heuristics."""
    guess = extract_fields(original)
    fields = fields or {}
    return {k: fields.get(k) if fields.get(k) not in (None, "") else guess.get(k) for k in HEADER_FIELDS}


def header_kept(original: str, rewrite: str, fields: Optional[Mapping[str, Any]] = None) -> float:
    """Share of the original's header fields the rewrite keeps (module docstring); NaN if none."""
    found = header_fields(original, fields)
    low = rewrite.lower()
    kept = []
    for k, v in found.items():
        if v is None:
            continue
        if k == "remote":
            kept.append(bool((_REMOTE if v else _ONSITE).search(rewrite)))
        else:
            kept.append(str(v).strip().lower() in low)
    return sum(kept) / len(kept) if kept else float("nan")


def preservation_rows(originals: Sequence[str], rewrites: Sequence[str],
                      original_vecs: Optional[Any] = None, rewrite_vecs: Optional[Any] = None,
                      fields: Optional[Sequence[Optional[Mapping[str, Any]]]] = None
                      ) -> dict[str, np.ndarray]:
    """{metric: [N]} for the pairs (METRICS; `cosine` only when both vector arrays are given)."""
    n = len(originals)
    if len(rewrites) != n:
        raise ValueError(f"preservation_rows: {n} originals for {len(rewrites)} rewrites")
    fields = fields if fields is not None else [None] * n
    out: dict[str, np.ndarray] = {}
    if original_vecs is not None and rewrite_vecs is not None:
        out["cosine"] = cosine_rows(rewrite_vecs, original_vecs)
    out["chrf"] = chrf(rewrites, originals)
    out["skills_kept"] = np.array([skills_kept(o, r) for o, r in zip(originals, rewrites)])
    out["header_kept"] = np.array([header_kept(o, r, f) for o, r, f in zip(originals, rewrites, fields)])
    out["length_ratio"] = np.array([len(r) / max(len(o), 1) for o, r in zip(originals, rewrites)])
    return out


# ----------------------------------------------------------------------------- faithfulness
def faithful_mask(cosine: Any, header: Any, tau: float, require_header: bool = True) -> np.ndarray:
    """Faithful rewrites, bool of cosine's shape: cosine to the original ≥ `tau` (NaN, e.g. an
    empty text, is not faithful) and, with `require_header`, `header_kept` = 1 (NaN: the original
    has no header field to keep, which passes)."""
    cos = np.asarray(cosine, np.float64)
    hk = np.asarray(header, np.float64)
    if cos.shape != hk.shape:
        raise ValueError(f"faithful_mask: cosine {cos.shape} and header {hk.shape} differ in shape")
    ok = np.nan_to_num(cos, nan=-np.inf) >= tau
    if require_header:
        ok &= np.isnan(hk) | (hk >= 1.0 - 1e-9)
    return ok


@dataclasses.dataclass
class Faithfulness:
    """The faithfulness test of a rewrite: cosine under `embedder` ≥ `tau` and (with
    `require_header`) every header field of the original kept (`eval.preservation`)."""

    embedder: Any
    tau: float = 0.8
    require_header: bool = True

    def cosine(self, originals: Sequence[str], rewrites: Sequence[str]) -> np.ndarray:
        return cosine_rows(self.embedder.embed(list(rewrites)), self.embedder.embed(list(originals)))

    def __call__(self, originals: Sequence[str], rewrites: Sequence[str],
                 fields: Optional[Sequence[Optional[dict]]] = None) -> tuple[np.ndarray, np.ndarray]:
        """(faithful [N] bool, cosine [N]) of each rewrite against its original."""
        fields = fields if fields is not None else [None] * len(originals)
        cos = self.cosine(originals, rewrites)
        head = np.array([header_kept(o, r, f) for o, r, f in zip(originals, rewrites, fields)])
        return faithful_mask(cos, head, self.tau, self.require_header), cos


def _pick(rewards: Any, faithful: Any, sign: float) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(rewards, np.float64)
    f = np.asarray(faithful, bool)
    if r.shape != f.shape or r.ndim != 2:
        raise ValueError(f"rewards {r.shape} and faithful {f.shape} must be one [N, n] shape")
    ok = f & np.isfinite(r)
    masked = np.where(ok, sign * r, -np.inf)
    return np.argmax(masked, axis=1), ok.any(axis=1)


def best_faithful(rewards: Any, faithful: Any) -> tuple[np.ndarray, np.ndarray]:
    """rewards [N, n], faithful [N, n] bool -> (index [N] of the highest reward among the faithful
    candidates of each row (first on ties), has_faithful [N]); a row with none gets index 0."""
    return _pick(rewards, faithful, 1.0)


def worst_faithful(rewards: Any, faithful: Any) -> tuple[np.ndarray, np.ndarray]:
    """As `best_faithful`, the lowest reward among the faithful candidates."""
    return _pick(rewards, faithful, -1.0)


# ----------------------------------------------------------------------------- length control
def _ols_effect(y: np.ndarray, is_b: np.ndarray, loglen: np.ndarray) -> float:
    """δ of y = a + δ·is_b + β·loglen (least squares); NaN if the design is singular."""
    x = np.stack([np.ones_like(y), is_b, loglen], 1)
    coef, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    return float(coef[1]) if rank == 3 else float("nan")


def _binned_effect(y: np.ndarray, is_b: np.ndarray, bins: np.ndarray) -> float:
    """Mean over length bins (weighted by rows) of mean(y | b, bin) − mean(y | a, bin); bins that
    hold only one system are left out; NaN when no bin holds both."""
    diffs, weights = [], []
    for k in np.unique(bins):
        sel = bins == k
        ya, yb = y[sel & (is_b == 0)], y[sel & (is_b == 1)]
        if ya.size and yb.size:
            diffs.append(yb.mean() - ya.mean())
            weights.append(ya.size + yb.size)
    return float(np.average(diffs, weights=weights)) if diffs else float("nan")


def length_controlled_difference(y_a: Any, y_b: Any, len_a: Any, len_b: Any, n_bins: int = 4,
                                 n_boot: int = 1000, seed: int = 0, ci: float = 0.95
                                 ) -> dict[str, Any]:
    """Difference b − a of a per-prompt metric controlled for length.

    y_a, y_b: [N] metric of systems a and b on the same N prompts; len_a, len_b: [N] lengths
    (characters). Prompts with a NaN anywhere are dropped. Returns {"n", "raw" (mean y_b − y_a),
    "covariate" (OLS δ with β·log(1+len)), "binned" (within `n_bins` pooled length-quantile bins),
    each with a percentile bootstrap CI over prompts ("<key>_ci": [low, high])}.
    """
    cols = [stats.as_float_1d(v, k) for v, k in ((y_a, "y_a"), (y_b, "y_b"), (len_a, "len_a"),
                                                 (len_b, "len_b"))]
    if len({c.size for c in cols}) != 1:
        raise ValueError(f"length_controlled_difference: arrays of lengths {[c.size for c in cols]}")
    ok = ~np.any([np.isnan(c) for c in cols], axis=0)
    ya, yb, la, lb = (c[ok] for c in cols)
    n = int(ya.size)
    nan = float("nan")
    if n < 2:
        return {"n": n, "raw": nan, "raw_ci": [nan, nan], "covariate": nan, "covariate_ci": [nan, nan],
                "binned": nan, "binned_ci": [nan, nan], "n_bins": n_bins}
    lengths = np.log1p(np.concatenate([la, lb]))
    edges = np.quantile(lengths, np.linspace(0, 1, n_bins + 1)[1:-1])

    def effects(idx: np.ndarray) -> tuple[float, float, float]:
        y = np.concatenate([ya[idx], yb[idx]])
        is_b = np.concatenate([np.zeros(idx.size), np.ones(idx.size)])
        ll = np.concatenate([np.log1p(la[idx]), np.log1p(lb[idx])])
        return (float(yb[idx].mean() - ya[idx].mean()), _ols_effect(y, is_b, ll),
                _binned_effect(y, is_b, np.searchsorted(edges, ll, side="right")))

    point = effects(np.arange(n))
    rng = np.random.default_rng(seed)
    boots = np.array([effects(i) for block in stats.resample_indices(n, n_boot, rng) for i in block])
    a = (1.0 - ci) / 2.0
    out: dict[str, Any] = {"n": n, "n_bins": n_bins}
    for j, key in enumerate(("raw", "covariate", "binned")):
        col = boots[:, j][~np.isnan(boots[:, j])]
        out[key] = point[j]
        out[f"{key}_ci"] = ([float(v) for v in np.quantile(col, [a, 1 - a])] if col.size else [nan, nan])
    return out
