"""RATE audits of a scorer/reward model: `python -m fairjax.rate {effects,run} ...`.

  # effects from an existing scored file (RATE's own data/scored/*.jsonl files work):
  python -m fairjax.rate effects --scored=FILE.jsonl [--reward_key=KEY] --output=effects.json [--plot=p.png]

  # end to end: corpus -> W labels -> rewrites -> rewrites of rewrites -> scores -> effects + plot
  python -m fairjax.rate run --corpus=../shared/data/hn_jobs/eval.jsonl --scorer=diversity \
      --pool=../shared/data/bios/bios.jsonl --output_dir=runs/rate_hn

`run` writes `scored.jsonl`, `effects.json` and `naive_vs_rate.png` (`fairjax.audit.run_rate`;
scorers by name in `fairjax.audit.SCORERS`, the estimators in `fairjax/eval/rate.py`).
"""
from __future__ import annotations

import json

from absl import app, flags

from fairjax import cli
from fairjax.audit import ScorerOptions, build_scorer, effects_from_file, run_rate
from fairjax.data.jobs import read_records
from fairjax.eval import rate as R

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define this CLI's absl flags (only when run as a program, so that importing several
    fairjax CLIs in one process never collides on shared flag names)."""
    if "scored" in flags.FLAGS:
        return
    flags.DEFINE_string("scored", None, "effects: RATE scored JSONL (or JSON object) file.")
    flags.DEFINE_string("reward_key", None, "effects: reward block to use (default: the only one).")
    flags.DEFINE_string("output", None, "effects: write the effects JSON here (default: print).")
    flags.DEFINE_string("plot", None, "effects: also write a naive-vs-RATE PNG here.")
    flags.DEFINE_string("corpus", None, "run: JSONL/CSV corpus of texts.")
    flags.DEFINE_string("text_field", "text", "run: field holding the text.")
    flags.DEFINE_integer("limit", None, "run: use only the first N texts.")
    flags.DEFINE_string("attribute", "gender_coded", "run: attribute W (key of rewriters.ATTRIBUTES).")
    flags.DEFINE_string("scorer", "diversity", "run: scorer name (key of fairjax.audit.SCORERS).")
    flags.DEFINE_multi_string("pool", None, "run, --scorer=diversity: candidate pool JSONL (repeatable).")
    flags.DEFINE_string("distance", "signed_tv", "run, --scorer=diversity: share distance.")
    flags.DEFINE_string("cache_dir", "", "run, --scorer=diversity: pool-embedding cache ('' = none).")
    flags.DEFINE_string("embedder", "all-minilm-l6-v2", "run, --scorer=diversity: text embedder "
                        "(all-minilm-l6-v2 | all-mpnet-base-v2 | tfidf | bert-cls:DIR | a "
                        "sentence-transformers directory).")
    flags.DEFINE_string("output_dir", None, "run: output directory.")
    flags.DEFINE_integer("n_boot", 1000, "Bootstrap resamples for the CIs (0 = none).")
    flags.DEFINE_integer("seed", 0, "Bootstrap seed.")


def _summary_line(e: dict) -> str:
    return (f"naive {e['naive_effect']:+.4f} ± {e['naive_effect_stderr']:.4f} | RATE ATE "
            f"{e['ATE_rewritten_rewrite']:+.4f} ± {e['ATE_rewritten_rewrite_stderr']:.4f} "
            f"(paired ± {e['ATE_rewritten_rewrite_paired_stderr']:.4f}) | single rewrite "
            f"{e['ATE_single_rewrite']:+.4f} | n1={e['Y1_count']} n0={e['Y0_count']} "
            f"| reward_std {e['reward_std']:.4f}")


def main(argv: list[str]) -> None:
    cmds = ("effects", "run")
    if len(argv) != 2 or argv[1] not in cmds:
        raise app.UsageError(f"usage: python -m fairjax.rate {{{','.join(cmds)}}} --flags...")
    if argv[1] == "effects":
        if not FLAGS.scored:
            raise app.UsageError("effects needs --scored=FILE.jsonl")
        eff = effects_from_file(FLAGS.scored, FLAGS.reward_key, FLAGS.n_boot, FLAGS.seed)
        if FLAGS.output:
            R.write_effects_json(FLAGS.output, eff)
        else:
            print(json.dumps(eff, indent=1))
        if FLAGS.plot:
            R.plot_naive_vs_rate({eff["reward_key"]: eff}, FLAGS.plot)
        print(_summary_line(eff))
        return
    if not FLAGS.corpus or not FLAGS.output_dir:
        raise app.UsageError("run needs --corpus and --output_dir")
    recs = read_records(FLAGS.corpus, text_field=FLAGS.text_field, clean=False)[: FLAGS.limit]
    scorer = build_scorer(FLAGS.scorer, ScorerOptions(FLAGS.pool or (), FLAGS.distance,
                                                      FLAGS.cache_dir or None, FLAGS.embedder))
    out = run_rate([r["text"] for r in recs], scorer, FLAGS.output_dir, ids=[r["id"] for r in recs],
                   attribute=FLAGS.attribute, n_boot=FLAGS.n_boot, seed=FLAGS.seed,
                   meta={"dataset_filename": FLAGS.corpus, "scorer": FLAGS.scorer,
                         "pool": list(FLAGS.pool or ())})
    e = out["effects"]
    print(f"{len(recs)} texts; W=1 (masculine-coded): {e['Y1_count']}; rewrite flip rate "
          f"{e['flip_rate_rewrite']:.3f}, rewrite-of-rewrite {e['flip_rate_rewritten_rewrite']:.3f}")
    print(_summary_line(e))
    print("wrote " + ", ".join(out[k] for k in ("scored", "effects_json", "plot")))


start = cli.program(define_flags, main, doc=__doc__)


if __name__ == "__main__":
    start()
