"""The `python -m fairjax.score` program: flags, the embedder and scorer they describe, and the
--calibrate_tau / --annotate modes (scoring and the report: `fairjax/score/`)."""
from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

from fairjax import cli
from fairjax import score as library
from fairjax.data.jobs import DataError, read_records
from fairjax.eval import fairness
from fairjax.rewards.constrained import calibrate_tau
from fairjax.rewards.diversity import DiversityConfig, DiversityScorer
from fairjax.rewards.embedders import BERT_CLS_PREFIX, HashingTfidfEmbedder, make_embedder
from fairjax.rewards.pool import CandidatePool, load_pool
from fairjax.rewards.precompute import annotate_jsonl
from fairjax.score import print_report, score

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


def build_embedder(pool: CandidatePool):
    """The `--embedder`; the hashing TF-IDF one with its idf fitted on `pool`'s texts."""
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
        records = read_records(FLAGS.texts, text_field=FLAGS.text_field)[: FLAGS.limit]
        # only the embedder: tau needs no candidate matching (the pool fits tfidf's idf)
        embedder = build_embedder(CandidatePool.concat([load_pool(p) for p in FLAGS.pool]))
        out = calibrate_tau([r["text"] for r in records], embedder, FLAGS.calibrate_tau)
        print(json.dumps({**out, "texts": FLAGS.texts, "pool": FLAGS.pool}, indent=1))
        return
    if FLAGS.annotate:
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


start = cli.program(define_flags, main, doc=library.__doc__)  # --help: fairjax/score/'s text


if __name__ == "__main__":
    start()
