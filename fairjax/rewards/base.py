"""The `Scorer` protocol shared by every reward / evaluation scorer.

Implemented by `DiversityScorer` (diversity.py), `GenderCodedScorer` (lexicon.py) and `PiiScorer`
(pii.py). A scorer maps texts to one float per text; higher is not necessarily better (each
scorer's docstring says). `name` identifies the scorer and its settings (used as a cache key by
`precompute.py`, so it must change whenever the scores would).
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Scorer(Protocol):
    name: str

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:  # texts [N] -> [N] float64
        ...
