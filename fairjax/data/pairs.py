"""Preference pairs for DPO: explicit JSONL pairs, or reward-ranked rewrites of job postings.

* Explicit: a JSONL file of `{"prompt", "chosen", "rejected"}` objects (bad lines raise
  `DataError("file:line: ...")`).
* Derived from postings (`pairs_from_postings`): each posting's response is paired with its
  gender-coded-wording counterfactual (`rewriters.LexiconRewriter`: masculine-coded terms swapped
  for neutral/feminine-coded ones, or back); both are scored by the run's reward scorer
  (`reward.scorer`; one that needs a reference is given the original), the higher-scoring text
  is "chosen"; pairs whose reward gap is ≤ `min_margin` (or whose
  rewrite equals the original) are dropped. Deterministic.

`PairDataset` lays pairs out with `layout.layout_pair` (the same trimmed prompt for both rows) and
is fed by `batching.BatchIterator` with `collate_pairs` (chosen_*/rejected_* batch keys).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from fairjax.data.jobs import DataError
from fairjax.data.layout import Episode, Truncation, collate_pairs, layout_pair
from fairjax.rewriters import LexiconRewriter, w_gender_coded


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str
    margin: float = float("nan")  # reward(chosen) - reward(rejected) when known


def read_pairs(path: str | os.PathLike) -> list[Pair]:
    """JSONL of {"prompt", "chosen", "rejected"} (strings) -> pairs."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: invalid JSON ({e.msg})") from e
            if not isinstance(rec, dict) or not all(
                    isinstance(rec.get(k), str) and rec.get(k) for k in ("prompt", "chosen", "rejected")):
                raise DataError(f"{path}:{n}: expected an object with non-empty string 'prompt', "
                                "'chosen' and 'rejected'")
            out.append(Pair(rec["prompt"], rec["chosen"], rec["rejected"]))
    if not out:
        raise DataError(f"{path}: no pairs")
    return out


def pairs_from_postings(prompts: Sequence[str], responses: Sequence[str], scorer,
                        min_margin: float = 0.0) -> list[Pair]:
    """Reward-ranked (original, gender-coded counterfactual) pairs; see the module docstring."""
    w = w_gender_coded(responses)
    rewrites = LexiconRewriter().rewrite(responses, 1 - w)
    keep = [i for i, (a, b) in enumerate(zip(responses, rewrites)) if a != b]
    if not keep:
        return []
    orig = [responses[i] for i in keep]
    if getattr(scorer, "needs_reference", False):  # e.g. preservation: against the original
        r_orig, r_new = scorer.score_texts(orig, orig), scorer.score_texts(
            [rewrites[i] for i in keep], orig)
    else:
        r_orig, r_new = scorer.score_texts(orig), scorer.score_texts([rewrites[i] for i in keep])
    out = []
    for j, i in enumerate(keep):
        gap = float(r_new[j] - r_orig[j])
        if not np.isfinite(gap) or abs(gap) <= min_margin:
            continue
        chosen, rejected = (rewrites[i], responses[i]) if gap > 0 else (responses[i], rewrites[i])
        out.append(Pair(prompts[i], chosen, rejected, abs(gap)))
    return out


@dataclass(frozen=True)
class PairEpisodes:
    chosen: Episode
    rejected: Episode

    @property
    def length(self) -> int:
        return max(self.chosen.length, self.rejected.length)

    @property
    def num_states(self) -> int:
        return max(self.chosen.num_states, self.rejected.num_states)


def layout_pairs(tok, pairs: Sequence[Pair], truncation: Optional[Truncation] = None
                 ) -> list[PairEpisodes]:
    out = []
    for i, p in enumerate(pairs):
        eps = layout_pair(tok, p.prompt, p.chosen, p.rejected, truncation=truncation, example_id=i)
        if eps is not None:
            out.append(PairEpisodes(*eps))
    return out


def pair_collate(pad_id: int, buckets: Optional[Sequence[int]] = None):
    """A `BatchIterator` collate_fn over `PairEpisodes` items."""
    def collate(items: Sequence[PairEpisodes], pad_to=None, state_pad_to=None, batch_size=None,
                **_):
        items = list(items)
        if batch_size is not None and len(items) < batch_size:  # fixed shapes: repeat the last
            items += [items[-1]] * (batch_size - len(items))
        return collate_pairs([(p.chosen, p.rejected) for p in items], pad_id, buckets=buckets,
                             pad_to=pad_to)
    return collate
