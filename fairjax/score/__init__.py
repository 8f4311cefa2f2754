"""Score job texts for fairness (`score`, `print_report`); the program around them is
`python -m fairjax.score --texts=FILE.jsonl --pool=POOL.jsonl ...` (fairjax/cli/score.py).

Prints per-posting and aggregate diversity reward, demographic shares, selection rates / impact
ratios (gender and region, whichever the pools label), four-fifths violations, gender-coded wording
verdicts and contact-data (PII) rates; `--output` writes one JSON line per posting and
`--summary_json` the aggregates. Example (real data beside the repo):

  python -m fairjax.score --texts=../shared/data/hn_jobs/eval.jsonl \
      --pool=../shared/data/bios/bios.jsonl --pool=../shared/data/tech_bios/bios.jsonl

Several pools are concatenated; a candidate without a label for an attribute is not counted for
it. Pools that label different attributes (bios: gender; hn_candidates: region only) are best
scored in separate runs, because a text whose top-k has no labelled candidate gets reward -100.
"""
from __future__ import annotations

import collections
import sys
from typing import Any

import numpy as np

from fairjax.data.jobs import extract_fields
from fairjax.eval import fairness, stats
from fairjax.rewards import lexicon, pii
from fairjax.rewards.diversity import DiversityScorer


def _f(x: float) -> str:
    return "  nan" if x is None or np.isnan(x) else f"{x:5.2f}"


def score(records: list[dict[str, Any]], scorer: DiversityScorer,
          occupation_field: str = "occupation") -> tuple[list[dict], dict]:
    """Per-posting rows and aggregate summary for records with 'text' (and optional location)."""
    texts = [r["text"] for r in records]
    locations = None
    if scorer.config.location_filter:
        locations = [r.get("location") or extract_fields(r["text"])["location"] for r in records]
    occupations = None
    if scorer.config.gender_target == "occupation":
        occupations = [(r.get("extra") or {}).get(occupation_field) for r in records]
        missing = [r["source"] for r, o in zip(records, occupations) if not o]
        if missing:
            raise ValueError(f"{missing[0]}: no {occupation_field!r} field "
                             f"(needed by --gender_target=occupation)")
    res = scorer.evaluate(texts, locations=locations, occupations=occupations)
    rates = {k: v for a in scorer.attrs for k, v in res.rates[a].items()}
    flags_ = fairness.four_fifths_flags(rates)
    codings = [lexicon.code_text(t) for t in texts]
    piis = [pii.find_pii(t) for t in texts]
    rows = []
    for i, r in enumerate(records):
        row = {"id": r.get("id") or r["source"], "reward": float(res.reward[i]),
               "n_matched": int(res.n_matched[i])}
        for a in scorer.attrs:
            for g, name in enumerate(res.groups[a]):
                row[f"share_{name}"] = float(res.shares[a][i, g])
            row[f"distance_{a}"] = float(res.distance[a][i])
        row.update({k: float(v[i]) for k, v in rates.items()})
        for a in scorer.attrs:  # per-group counts behind the corpus selection table
            sel, pool = res.counts[a]
            for g, name in enumerate(res.groups[a]):
                row[f"n_sel_{name}"], row[f"n_pool_{name}"] = int(sel[i, g]), int(pool[i, g])
        row.update({k: bool(v[i]) for k, v in flags_.items()})
        c = codings[i]
        row.update({"masculine": c.masculine, "feminine": c.feminine, "coded_ratio": c.coded_ratio,
                    "verdict": c.verdict, "pii_per_char": piis[i].pii_per_char,
                    **{f"pii_{k}": v for k, v in piis[i].counts.items()}})
        rows.append(row)
    numeric = {k: np.array([row[k] for row in rows], np.float64) for k in rows[0]
               if isinstance(rows[0][k], (int, float, bool)) and k != "id"}
    numeric["has_pii"] = np.array([p.total > 0 for p in piis], np.float64)
    summary = {"n_texts": len(rows), "metrics": stats.summarize_columns(numeric),
               "verdicts": dict(collections.Counter(c.verdict for c in codings).most_common()),
               "pool": scorer.pool.describe(), "embedder": scorer.embedder.id,
               "config": {k: getattr(scorer.config, k) for k in ("k", "select_k", "distance",
                                                                  "gender_target", "region_target",
                                                                  "location_filter")},
               "attributes": scorer.attrs}
    return rows, summary


def print_report(rows: list[dict], summary: dict, show: int, out=sys.stdout) -> None:
    ir_keys = [k for k in rows[0] if k.startswith("ir_")]
    gender = "share_female" in rows[0]
    head = f"{'id':<16} {'reward':>7} " + ("F-share " if gender else "") + \
        " ".join(f"{k[3:][:9]:>9}" for k in ir_keys) + "  4/5  verdict"
    print(head, file=out)
    for row in rows[: len(rows) if show < 0 else show]:
        line = f"{str(row['id'])[:16]:<16} {row['reward']:7.1f} "
        if gender:
            line += f"{_f(row['share_female']):>7} "
        line += " ".join(f"{_f(row[k]):>9}" for k in ir_keys)
        line += f"  {'VIOL' if row.get('violates_any') else ' ok '}  {row['verdict']}"
        print(line, file=out)
    if 0 <= show < len(rows):
        print(f"... ({len(rows) - show} more rows; --show=-1 prints all)", file=out)
    print(f"\n== aggregate over {summary['n_texts']} texts ({summary['pool']}; "
          f"embedder {summary['embedder']}; {summary['config']})", file=out)
    for k, s in summary["metrics"].items():
        if k == "n_matched" or k.startswith(("sr_", "pii_", "n_sel_", "n_pool_")) and k != "pii_per_char":
            continue
        print(f"  {k:<28} mean {s['mean']:9.4f}  std {s['std']:8.4f}  "
              f"95% CI [{s['ci_low']:.4f}, {s['ci_high']:.4f}]  n={s['n']}", file=out)
    print("  gender-coded verdicts: " + ", ".join(f"{k}: {v}" for k, v in summary["verdicts"].items()),
          file=out)
