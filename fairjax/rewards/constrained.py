"""The faithful-rewrite reward (`reward.scorer=constrained`): fairness counts only for a rewrite that
is still the same job.

Per rewrite x of an original o (numpy; the similarity comes from the diversity scorer's embedder):

* fairness term  F(x) = w_div · div(x) + w_coded · (−|coded_ratio(x)|), with div the diversity reward
  (−100 · Σ_attributes share distance, `diversity.py`; a text that matches no candidate gets
  NO_MATCH_REWARD = −100) and coded_ratio the Gaucher et al. ratio in [−1, 1] (`lexicon.py`).
  Both terms are bounded: div ∈ [−100·A, 0] (A = attributes the pool labels, each distance in
  [0, 1]) and −|coded_ratio| ∈ [−1, 0], so F ∈ [−B, 0] with **B = 100·w_div·A + w_coded**
  (weights ≥ 0);
* faithful       sim(x, o) ≥ τ (cosine of the embedder vectors; a text without features has
  similarity 0) **and** every header field found in o (company, title, location, remote/onsite;
  `fairjax.eval.preservation.header_kept`) is kept in x (no header field found: nothing to keep);
* `form=hard`    reward = F(x) if faithful, else the floor −B − margin (margin > 0): every
  unfaithful text scores strictly below every faithful one, whatever their fairness terms;
* `form=smooth`  reward = F(x) − λ·max(0, τ − sim) − μ·(1 − header_kept): a penalty with a
  gradient for the online objectives (GRPO/RLOO/PPO), no floor.

Every monotone normalisation (`reward.normalize`) keeps the hard form's ordering.

The reference (original) of each text: online objectives pass each prompt's posting; the offline
data build reads a record's `original` field (rewrite-augmented data) and otherwise the record's
own text (then sim = 1 and the constraint never acts; `training.prepare_rewards` refuses that).

τ is chosen from data (`calibrate_tau`): a low percentile (default the 5th) of the similarity of
lexicon-swap rewrites (`LexiconRewriter` towards neutral wording, no appended sentences) to their
originals on the train postings, so that a rewrite that changes no more than the swap does is
faithful 95% of the time; `python -m fairjax.score --calibrate_tau=5 ...` prints it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np

# the module, not its class: fairjax.rewriters imports fairjax.rewards (this package) at import time
from fairjax import rewriters
from fairjax.eval import preservation
from fairjax.rewards.base import ScorerFailure
from fairjax.rewards.lexicon import code_text

FORMS = ("hard", "smooth")


@dataclasses.dataclass(frozen=True)
class ConstrainedConfig:
    """`reward.constrained` (configs/common.py): the form and constants of the constrained reward."""

    form: str = "hard"             # hard | smooth (module docstring)
    tau: float = 0.9588            # similarity threshold (calibrated: configs/common.py)
    diversity_weight: float = 1.0  # w_div
    gender_coded_weight: float = 0.0  # w_coded (0 = diversity only)
    margin: float = 1.0            # hard: floor = −B − margin
    penalty: float = 100.0         # smooth: λ per unit of similarity below τ
    header_penalty: float = 50.0   # smooth: μ per share of header fields lost

    def __post_init__(self):
        if self.form not in FORMS:
            raise ValueError(f"form={self.form!r}; expected one of {list(FORMS)}")
        for k in ("diversity_weight", "gender_coded_weight", "penalty", "header_penalty"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k}={getattr(self, k)}: expected >= 0")
        if self.margin <= 0:
            raise ValueError(f"margin={self.margin}: expected > 0 (the "
                             "floor must lie strictly below every faithful reward)")
        if not -1.0 <= self.tau <= 1.0:
            raise ValueError(f"tau={self.tau}: a cosine, expected in [-1, 1]")


@dataclasses.dataclass
class ConstrainedResult:
    """Per-text parts of the constrained reward for N texts."""

    reward: np.ndarray       # [N]
    fairness: np.ndarray     # [N] F(x)
    diversity: np.ndarray    # [N] div(x)
    similarity: np.ndarray   # [N] cosine to the original (0 for a text without features)
    header_kept: np.ndarray  # [N] share of the original's header fields kept (1 if none found)
    faithful: np.ndarray     # [N] bool
    unmatched: np.ndarray    # [N] bool: matched no candidate (no embedding features / no label)


class ConstrainedScorer:
    """`score_texts(texts, references) -> [N]` constrained reward (module docstring)."""

    needs_reference = True

    def __init__(self, diversity: Any, config: ConstrainedConfig = ConstrainedConfig(),
                 strict: bool = True):
        self.diversity, self.config, self.strict = diversity, config, strict
        self.embedder = diversity.embedder
        c = config
        self.name = (f"constrained_{c.form}(tau={c.tau:g},w={c.diversity_weight:g}/"
                     f"{c.gender_coded_weight:g},{diversity.name}@{self.embedder.id}"
                     + (f",m={c.margin:g})" if c.form == "hard" else
                        f",lam={c.penalty:g},mu={c.header_penalty:g})"))

    @property
    def bound(self) -> float:
        """B: every fairness term lies in [−B, 0]."""
        return (100.0 * self.config.diversity_weight * len(self.diversity.attrs)
                + self.config.gender_coded_weight)

    @property
    def floor(self) -> float:
        """The hard form's reward of an unfaithful text, −B − margin."""
        return -self.bound - self.config.margin

    def evaluate(self, texts: Sequence[str], references: Sequence[str]) -> ConstrainedResult:
        texts, references = list(texts), list(references)
        if len(references) != len(texts):
            raise ValueError(f"the constrained reward needs one original (reference) per text, "
                             f"got {len(references)} for {len(texts)} texts")
        c = self.config
        vecs = self.embedder.embed(texts + references)
        sim = preservation.cosine_rows(vecs[:len(texts)], vecs[len(texts):])
        sim = np.where(np.isnan(sim), 0.0, sim)
        kept = np.array([preservation.header_kept(o, x) for x, o in zip(texts, references)])
        kept = np.where(np.isnan(kept), 1.0, kept)
        res = self.diversity.evaluate(texts, embeddings=vecs[:len(texts)])
        unmatched = np.zeros(len(texts), bool)
        for a in self.diversity.attrs:
            unmatched |= np.isnan(res.distance[a])
        coded = np.array([abs(code_text(t).coded_ratio) for t in texts]) if c.gender_coded_weight \
            else np.zeros(len(texts))
        fair = c.diversity_weight * res.reward - c.gender_coded_weight * coded
        faithful = (sim >= c.tau) & (kept >= 1.0)
        if c.form == "hard":
            reward = np.where(faithful, fair, self.floor)
        else:
            reward = fair - c.penalty * np.maximum(0.0, c.tau - sim) - c.header_penalty * (1.0 - kept)
        return ConstrainedResult(reward=reward, fairness=fair, diversity=res.reward, similarity=sim,
                                 header_kept=kept, faithful=faithful, unmatched=unmatched)

    def score_texts(self, texts: Sequence[str], references: Optional[Sequence[str]] = None
                    ) -> np.ndarray:
        """texts [N], references [N] -> reward [N] float64. strict: a *faithful* text whose top k
        has no labelled candidate raises ScorerFailure (an unfaithful one gets the floor)."""
        if references is None:
            raise ValueError("the constrained reward needs one original (reference) per text")
        res = self.evaluate(texts, references)
        live = res.faithful if self.config.form == "hard" else np.ones_like(res.faithful)
        bad = np.nonzero(res.unmatched & live & (np.asarray([bool(t.strip()) for t in texts])))[0]
        if self.strict and bad.size:
            raise ScorerFailure(int(bad[0]), "empty candidate match: none of the top "
                                f"{self.diversity.config.k} candidates carries a label")
        return res.reward


def lexicon_swaps(texts: Sequence[str]) -> list[str]:
    """The lexicon-swap rewrites of `texts` (towards neutral wording, no appended sentences)."""
    return rewriters.LexiconRewriter(balance=False).rewrite(list(texts), np.zeros(len(texts), bool))


def calibrate_tau(originals: Sequence[str], embedder: Any, percentile: float = 5.0
                  ) -> dict[str, Any]:
    """τ = the `percentile` of cos(e(lexicon swap of o), e(o)) over `originals` (the train postings).

    Only the postings the swap changes count (an unchanged one is a copy, similarity 1, and would
    only push the percentile up); when it changes none, all count. Returns {"tau", "percentile",
    "n", "n_changed", "embedder", "similarity": {"mean", "min", "p1", "p5", "p10", "p50"}} (over
    the changed swaps)."""
    originals = [t for t in originals if t.strip()]
    if not originals:
        raise ValueError("calibrate_tau: no non-empty postings")
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"calibrate_tau: percentile={percentile}, expected in [0, 100]")
    swaps = lexicon_swaps(originals)
    vecs = embedder.embed(list(originals) + swaps)
    sim = preservation.cosine_rows(vecs[len(originals):], vecs[:len(originals)])
    sim = np.where(np.isnan(sim), 0.0, sim)
    changed = np.array([a != b for a, b in zip(originals, swaps)])
    sim = sim[changed] if changed.any() else sim
    q = {f"p{p:g}": float(np.percentile(sim, p)) for p in (1, 5, 10, 50)}
    return {"tau": float(np.percentile(sim, percentile)), "percentile": float(percentile),
            "n": len(originals), "n_changed": int(changed.sum()),
            "embedder": embedder.id,
            "similarity": {"mean": float(sim.mean()), "min": float(sim.min()), **q}}
