"""RATE audits of a scorer/reward model: `python -m fairjax.rate {effects,run} ...`.

  # effects from an existing scored file (RATE's own data/scored/*.jsonl files work):
  python -m fairjax.rate effects --scored=FILE.jsonl [--reward_key=KEY] --output=effects.json [--plot=p.png]

  # end to end: corpus -> W labels -> rewrites -> rewrites of rewrites -> scores -> effects + plot
  python -m fairjax.rate run --corpus=../shared/data/hn_jobs/eval.jsonl --scorer=diversity \
      --pool=../shared/data/bios/bios.jsonl --output_dir=runs/rate_hn

`run` writes `scored.jsonl` (RATE schema: w_original, completions, reward_question, <scorer name>:
{original, rewrite, rewritten rewrite}, plus id), `effects.json` (upstream keys + fairjax
additions, see `fairjax/eval/rate.py`) and `naive_vs_rate.png`. Scorers are resolved by name in
`SCORERS` (name -> factory(options) -> Scorer); attributes (classifier + rewriter) in
`fairjax.rewriters.ATTRIBUTES`. Add a value-head scorer by registering a factory in `SCORERS`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Optional, Sequence

import numpy as np
from absl import app, flags

from fairjax import rewriters
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
    flags.DEFINE_string("scorer", "diversity", "run: scorer name (key of SCORERS).")
    flags.DEFINE_multi_string("pool", None, "run, --scorer=diversity: candidate pool JSONL (repeatable).")
    flags.DEFINE_string("distance", "signed_tv", "run, --scorer=diversity: share distance.")
    flags.DEFINE_string("cache_dir", "", "run, --scorer=diversity: pool-embedding cache ('' = none).")
    flags.DEFINE_string("embedder", "all-minilm-l6-v2", "run, --scorer=diversity: text embedder "
                        "(all-minilm-l6-v2 | all-mpnet-base-v2 | tfidf | bert-cls:DIR | a "
                        "sentence-transformers directory).")
    flags.DEFINE_string("output_dir", None, "run: output directory.")
    flags.DEFINE_integer("n_boot", 1000, "Bootstrap resamples for the CIs (0 = none).")
    flags.DEFINE_integer("seed", 0, "Bootstrap seed.")



# ----------------------------------------------------------------------------- scorers
@dataclasses.dataclass
class ScorerOptions:
    pool: Sequence[str] = ()
    distance: str = "signed_tv"
    cache_dir: Optional[str] = None
    embedder: str = "all-minilm-l6-v2"  # fairjax.rewards.embedders.make_embedder name


def _diversity(o: ScorerOptions):
    from fairjax.rewards.diversity import DiversityConfig, DiversityScorer
    from fairjax.rewards.embedders import make_embedder
    from fairjax.rewards.pool import CandidatePool, load_pool

    if not o.pool:
        raise ValueError("--scorer=diversity needs at least one --pool=FILE.jsonl")
    pool = CandidatePool.concat([load_pool(p) for p in o.pool])
    return DiversityScorer(pool, make_embedder(o.embedder), config=DiversityConfig(distance=o.distance),
                           cache_dir=o.cache_dir)


def _gender_coded(o: ScorerOptions):
    from fairjax.rewards.lexicon import GenderCodedScorer

    return GenderCodedScorer("ratio")


def _pii(o: ScorerOptions):
    from fairjax.rewards.pii import PiiScorer

    return PiiScorer()


SCORERS: dict[str, Callable[[ScorerOptions], Any]] = {
    "diversity": _diversity, "gender_coded": _gender_coded, "pii": _pii,
}


def build_scorer(name: str, options: ScorerOptions):
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; registered: {sorted(SCORERS)}")
    return SCORERS[name](options)


# ----------------------------------------------------------------------------- pipeline
def run_rate(texts: Sequence[str], scorer, output_dir: str | os.PathLike, *,
             ids: Optional[Sequence[str]] = None, attribute: str = "gender_coded",
             rewriter: Optional[rewriters.Rewriter] = None, n_boot: int = 1000, seed: int = 0,
             meta: Optional[dict] = None) -> dict[str, Any]:
    """corpus texts [N] -> W, rewrites, rewrites of rewrites, scores -> files in output_dir.

    Returns {"effects": dict, "scored": path, "effects_json": path, "plot": path}.
    """
    if attribute not in rewriters.ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}; registered: {sorted(rewriters.ATTRIBUTES)}")
    if not texts:
        raise ValueError("no texts to audit")
    classifier, default_rewriter = rewriters.ATTRIBUTES[attribute]
    rewriter = rewriter if rewriter is not None else default_rewriter()
    rw = rewriters.rate_rewrites(list(texts), rewriter, classifier)
    versions = {R.ORIGINAL: list(texts), R.REWRITE: rw[R.REWRITE],
                R.REWRITTEN_REWRITE: rw[R.REWRITTEN_REWRITE]}
    scores = {k: np.asarray(scorer.score_texts(v), np.float64) for k, v in versions.items()}
    key = getattr(scorer, "name", type(scorer).__name__)
    ids = list(ids) if ids is not None else [str(i) for i in range(len(texts))]
    records = [R.scored_record(rw["w"][i], {k: v[i] for k, v in versions.items()},
                               {key: {k: s[i] for k, s in scores.items()}}, id=ids[i])
               for i in range(len(texts))]
    os.makedirs(output_dir, exist_ok=True)
    scored = R.write_scored_jsonl(os.path.join(output_dir, "scored.jsonl"), records)
    effects = R.treatment_effects(rw["w"], scores[R.ORIGINAL], scores[R.REWRITE],
                                  scores[R.REWRITTEN_REWRITE], n_boot=n_boot, seed=seed)
    effects.update(reward_key=key, concept=attribute, rewriter=getattr(rewriter, "name", "?"),
                   flip_rate_rewrite=rw["flip_rate_rewrite"],
                   flip_rate_rewritten_rewrite=rw["flip_rate_rewritten_rewrite"], **(meta or {}))
    ej = R.write_effects_json(os.path.join(output_dir, "effects.json"), effects)
    plot = R.plot_naive_vs_rate({f"{attribute} -> {key}": effects},
                                os.path.join(output_dir, "naive_vs_rate.png"))
    return {"effects": effects, "scored": scored, "effects_json": ej, "plot": plot}


def effects_from_file(path: str, reward_key: Optional[str] = None, n_boot: int = 1000,
                      seed: int = 0) -> dict[str, Any]:
    """Effects of a RATE scored file, with `reward_key` and `dataset_filename` recorded."""
    records = R.read_scored_jsonl(path)
    sc = R.scores_from_records(records, reward_key, where=path)
    key = reward_key or R.reward_keys(records[0])[0]
    eff = R.effects_from_scores(sc, n_boot=n_boot, seed=seed)
    eff.update(reward_key=key, dataset_filename=os.path.basename(path))
    return eff


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
    from fairjax.data.jobs import read_records

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


if __name__ == "__main__":
    from fairjax import cli

    define_flags()
    cli.run(main)
