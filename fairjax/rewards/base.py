"""The `Scorer` protocol shared by every reward / evaluation scorer.

Implemented by `DiversityScorer` (diversity.py), `GenderCodedScorer` (lexicon.py) and `PiiScorer`
(pii.py). A scorer maps texts to one float per text; higher is not necessarily better (each
scorer's docstring says). `name` identifies the scorer and its settings (used as a cache key by
`precompute.py`, so it must change whenever the scores would).

A scorer that compares a text with its original (the content-preservation term) also takes
`references` [N] and sets `needs_reference = True`. A scorer that finds a text it cannot score (e.g.
no candidate matched) raises `ScorerFailure(index, reason)` so the caller can name the record.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Scorer(Protocol):
    name: str

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:  # texts [N] -> [N] float64
        ...


class ScorerFailure(ValueError):
    """Text `index` of the batch given to `score_texts` could not be scored, for `reason`."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"text {index}: {reason}")
        self.index, self.reason = index, reason
