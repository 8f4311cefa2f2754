"""RATE audits of a scorer / reward model (the library behind `python -m fairjax.rate`):
corpus -> W labels -> rewrites -> rewrites of rewrites -> scores -> treatment effects + plot.

`run_rate` writes `scored.jsonl` (RATE schema: w_original, completions, reward_question, <scorer
name>: {original, rewrite, rewritten rewrite}, plus id), `effects.json` (upstream keys + fairjax
additions, see `fairjax/eval/rate.py`, the estimators) and `naive_vs_rate.png`;
`effects_from_file` reads an existing scored file (RATE's own data/scored/*.jsonl files work).
Scorers are resolved by name in `SCORERS` (name -> factory(options) -> Scorer); attributes
(classifier + rewriter) in `fairjax.rewriters.ATTRIBUTES`. Add a value-head scorer by
registering a factory in `SCORERS`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional, Sequence

import numpy as np

from fairjax import rewriters
from fairjax.eval import rate as R
from fairjax.rewards.diversity import DiversityConfig, DiversityScorer
from fairjax.rewards.embedders import make_embedder
from fairjax.rewards.lexicon import GenderCodedScorer
from fairjax.rewards.pii import PiiScorer
from fairjax.rewards.pool import CandidatePool, load_pool


# ----------------------------------------------------------------------------- scorers
@dataclasses.dataclass
class ScorerOptions:
    pool: Sequence[str] = ()
    distance: str = "signed_tv"
    cache_dir: Optional[str] = None
    embedder: str = "all-minilm-l6-v2"  # fairjax.rewards.embedders.make_embedder name


def _diversity(o: ScorerOptions):
    if not o.pool:
        raise ValueError("--scorer=diversity needs at least one --pool=FILE.jsonl")
    pool = CandidatePool.concat([load_pool(p) for p in o.pool])
    return DiversityScorer(pool, make_embedder(o.embedder), config=DiversityConfig(distance=o.distance),
                           cache_dir=o.cache_dir)


def _gender_coded(o: ScorerOptions):
    return GenderCodedScorer("ratio")


def _pii(o: ScorerOptions):
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
