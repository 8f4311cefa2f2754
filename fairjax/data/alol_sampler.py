"""A-LoL's priority sampling of training examples ("Leftover Lunch"), numpy only and seeded.

Upstream (`abaheti95/LoL-RL`, `lolrl_qlora_llama_hh.py` + `numba_choice` in `utils/rl_utils.py`):
weights w_i = max(A_i, 0), p_i = w_i / Σw, indices with p_i = 0 are DROPPED, and each step draws a
batch by inverse-CDF sampling over cumsum(p). `numba_choice` has a duplicate check whose body is a
no-op `continue` inside the inner loop, so the draw is effectively WITH replacement; fairjax samples
with replacement on purpose (same distribution) and documents it rather than "fixing" it.
`max_steps`/`eval_steps` are scaled by `positive_ratio` = frac(A > 0) upstream (`positive_ratio`).

Strategies (`strategy=`):
  "good_priority": p ∝ max(A, 0) (a_lol*), or p ∝ rewards for wbc / r_gold / r_lol (pass the
                   rewards as `weights`).
  "good_random":   uniform over the examples with A > 0.
  "uniform":       uniform over everything (upstream `None`; A⁺ in the loss zeroes A ≤ 0).
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

STRATEGIES = ("good_priority", "good_random", "uniform")


class PrioritySampler:
    """Seeded sampler of example indices.

    weights: [N] advantages (or rewards); entries ≤ 0 are dropped for the "good_*" strategies.
    """

    def __init__(self, weights: np.ndarray, strategy: str = "good_priority", seed: int = 0):
        w = np.asarray(weights, np.float64).reshape(-1)
        if strategy not in STRATEGIES:
            raise ValueError(f"PrioritySampler: strategy must be one of {STRATEGIES}, got {strategy!r}")
        if not np.all(np.isfinite(w)):
            bad = np.flatnonzero(~np.isfinite(w))[:5].tolist()
            raise ValueError(f"PrioritySampler: weights must be finite; non-finite at indices {bad}")
        self.num_examples = int(w.size)
        self.strategy = strategy
        if strategy == "uniform":
            self.indices = np.arange(w.size)
            probs = np.ones(w.size)
        else:
            self.indices = np.flatnonzero(w > 0)
            probs = w[self.indices] if strategy == "good_priority" else np.ones(self.indices.size)
        if self.indices.size == 0:
            raise ValueError(f"PrioritySampler({strategy}): no example has a positive weight "
                             f"(N={w.size}); nothing to train on")
        self.probs = probs / probs.sum()
        self._cdf = np.cumsum(self.probs)
        self._cdf[-1] = 1.0
        self._rng = np.random.default_rng(seed)

    @property
    def positive_ratio(self) -> float:
        """Fraction of examples kept (upstream scales max_steps / eval_steps by it)."""
        return self.indices.size / max(self.num_examples, 1)

    def sample(self, batch_size: int) -> np.ndarray:
        """[batch_size] int64 example indices, drawn with replacement by inverse CDF."""
        u = self._rng.random(batch_size)
        return self.indices[np.searchsorted(self._cdf, u, side="right").clip(0, self.indices.size - 1)]

    def __iter__(self) -> Iterator[int]:
        while True:
            yield int(self.sample(1)[0])

    def state(self) -> dict:
        """The RNG state (store it in a checkpoint to resume the exact stream)."""
        return self._rng.bit_generator.state

    def restore(self, state: dict) -> None:
        self._rng.bit_generator.state = state


def scaled_steps(steps: int, sampler: Optional[PrioritySampler]) -> int:
    """Upstream scales max_steps / eval_steps by the positive ratio; at least 1 step."""
    if sampler is None:
        return steps
    return max(1, int(steps * sampler.positive_ratio))
