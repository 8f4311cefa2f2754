"""Score job texts for fairness: `python -m fairjax.score --texts=FILE.jsonl --pool=POOL.jsonl ...`

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
import json
import os
import sys
from typing import Any

import numpy as np
from absl import app, flags

from fairjax.data.jobs import DataError, extract_fields, read_records
from fairjax.eval import fairness, stats
from fairjax.rewards import lexicon, pii
from fairjax.rewards.diversity import DiversityConfig, DiversityScorer
from fairjax.rewards.embedders import BERT_CLS_PREFIX, make_embedder
from fairjax.rewards.pool import CandidatePool, load_pool

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define this CLI's absl flags (only when run as a program, so that importing several
    fairjax CLIs in one process never collides on shared flag names)."""
    if "texts" in flags.FLAGS:
        return
    flags.DEFINE_string("texts", None, "JSONL/CSV of texts to score.")
    flags.DEFINE_string("text_field", "text", "Field holding the text.")
    flags.DEFINE_multi_string("pool", None, "Candidate pool JSONL (repeatable; pools are concatenated).")
    flags.DEFINE_string("embedder", "all-minilm-l6-v2", "Text embedder: all-minilm-l6-v2 | "
                        "all-mpnet-base-v2 | tfidf (alias hashing) | bert (BERT [CLS] of --bert_dir) "
                        "| bert-cls:DIR | a sentence-transformers directory.")
    flags.DEFINE_string("bert_dir", None, "HF BERT directory for --embedder=bert.")
    flags.DEFINE_integer("n_features", 4096, "Hashing TF-IDF embedder dimension (--embedder=tfidf).")
    flags.DEFINE_integer("limit", None, "Score only the first N texts.")
    flags.DEFINE_integer("k", 50, "Matched candidates per text (pool of the impact ratio).")
    flags.DEFINE_integer("select_k", 10, "Selected candidates per text.")
    flags.DEFINE_enum("distance", "signed_tv", list(fairness.DISTANCES), "Share distance.")
    flags.DEFINE_enum("gender_target", "uniform", ["uniform", "pool", "occupation"], "Gender target.")
    flags.DEFINE_enum("region_target", "pool", ["uniform", "pool"], "Region target.")
    flags.DEFINE_string("occupation_field", "occupation", "Text field with the occupation "
                        "(for --gender_target=occupation).")
    flags.DEFINE_list("attributes", ["gender", "region"], "Attributes to score (when labelled).")
    flags.DEFINE_bool("location_filter", False, "Upstream location filter (job location from the "
                      "'location' field or the posting header).")
    flags.DEFINE_string("cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "fairjax", "pools"),
                        "Pool-embedding cache directory ('' disables).")
    flags.DEFINE_integer("show", 20, "Per-posting rows to print (-1 = all).")
    flags.DEFINE_string("output", None, "Write per-posting results to this JSONL.")
    flags.DEFINE_string("summary_json", None, "Write the aggregate figures to this JSON file.")
    flags.DEFINE_float("calibrate_tau", None, "Print the faithfulness threshold tau of "
                       "reward.scorer=constrained: this percentile (e.g. 5) of the similarity of the "
                       "lexicon-swap rewrites of --texts to their originals under the reward's "
                       "embedder (fitted on --pool), and exit.")
    flags.DEFINE_string("annotate", None, "Write a copy of --texts (JSONL) with the diversity reward "
                        "in each record's 'reward' field (training data for BC/ILQL/A-LoL), "
                        "and exit.")


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


def build_embedder(pool: CandidatePool):
    """The `--embedder`; the hashing TF-IDF one with its idf fitted on `pool`'s texts."""
    from fairjax.rewards.embedders import HashingTfidfEmbedder

    name = FLAGS.embedder
    if name == "bert":
        if not FLAGS.bert_dir:
            raise app.UsageError("--embedder=bert needs --bert_dir")
        name = BERT_CLS_PREFIX + FLAGS.bert_dir
    try:
        embedder = make_embedder(name, n_features=FLAGS.n_features)
    except ValueError as e:
        raise app.UsageError(f"--embedder={FLAGS.embedder}: {e}") from None
    if isinstance(embedder, HashingTfidfEmbedder) and embedder.idf is None:
        embedder.fit(pool.texts)
    return embedder


def build_scorer() -> DiversityScorer:
    pool = CandidatePool.concat([load_pool(p) for p in FLAGS.pool])
    embedder = build_embedder(pool)
    cfg = DiversityConfig(k=FLAGS.k, select_k=FLAGS.select_k, distance=FLAGS.distance,
                          attributes=tuple(FLAGS.attributes), gender_target=FLAGS.gender_target,
                          region_target=FLAGS.region_target, location_filter=FLAGS.location_filter)
    return DiversityScorer(pool, embedder, cfg, cache_dir=FLAGS.cache_dir or None)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.texts or not FLAGS.pool:
        raise app.UsageError("--texts and at least one --pool are required")
    if FLAGS.calibrate_tau is not None:
        from fairjax.rewards.constrained import calibrate_tau

        records = read_records(FLAGS.texts, text_field=FLAGS.text_field)[: FLAGS.limit]
        # only the embedder: tau needs no candidate matching (the pool fits tfidf's idf)
        embedder = build_embedder(CandidatePool.concat([load_pool(p) for p in FLAGS.pool]))
        out = calibrate_tau([r["text"] for r in records], embedder, FLAGS.calibrate_tau)
        print(json.dumps({**out, "texts": FLAGS.texts, "pool": FLAGS.pool}, indent=1))
        return
    if FLAGS.annotate:
        from fairjax.rewards.precompute import annotate_jsonl

        n = annotate_jsonl(FLAGS.texts, FLAGS.annotate, build_scorer(), text_field=FLAGS.text_field,
                           limit=FLAGS.limit)
        with open(FLAGS.annotate, encoding="utf-8") as f:
            rewards = np.array([np.nan if (r := json.loads(line)["reward"]) is None else r
                                for line in f], np.float64)
        ok = rewards[~np.isnan(rewards)]
        spread = (f"reward mean {ok.mean():.3f}, min {ok.min():.3f}, max {ok.max():.3f}" if ok.size
                  else "no finite reward")
        limit = f" (--limit={FLAGS.limit})" if FLAGS.limit is not None else ""
        print(f"annotated {n} records of {FLAGS.texts}{limit} -> {FLAGS.annotate}: {spread}; "
              f"{int(np.isnan(rewards).sum())} without a labelled match (reward null)")
        return
    records = read_records(FLAGS.texts, text_field=FLAGS.text_field, clean=False)
    if FLAGS.limit is not None:
        records = records[: FLAGS.limit]
    if not records:
        raise DataError(f"{FLAGS.texts}: no records (empty file, or --limit=0); expected one JSON "
                        f"object (or CSV row) with a {FLAGS.text_field!r} field per line")
    rows, summary = score(records, build_scorer(), FLAGS.occupation_field)
    print_report(rows, summary, FLAGS.show)
    if FLAGS.output:
        with open(FLAGS.output, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    if FLAGS.summary_json:
        with open(FLAGS.summary_json, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    from fairjax import cli

    define_flags()
    cli.run(main)
