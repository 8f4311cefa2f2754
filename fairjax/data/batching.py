"""Deterministic, resumable, per-process batching of laid-out episodes (numpy only, no jax).

`BatchIterator(dataset, batch_size, ...)` yields collated batch dicts (fairjax.data.layout.collate).

* Order: epoch e uses the permutation `default_rng(SeedSequence([seed, e])).permutation(N)` (identity
  when shuffle=False). Optional length grouping: within windows of `group_batches` global batches
  the examples are sorted by length, cut into batches, and the batches are shuffled (seeded), so
  batches hold similar lengths and pad less.
* `batch_size` is the GLOBAL batch. Process p of P takes rows [p*b, (p+1)*b), b = batch_size / P,
  of every global batch, so the processes' local batches together form the global batch.
* Padding: T and S are padded to `bucket_for(max over the GLOBAL batch, buckets)`, so every process
  builds the same shapes and only a few shapes ever reach jit. (Lengths come from
  `dataset.lengths()` when the dataset has it, else from the items.)
* drop_remainder=True drops the last partial global batch; False fills it with padding rows
  (all `<|pad|>`, terminals 1), which every loss ignores, so shapes stay fixed.
* num_epochs=None repeats forever.
* `state()` -> {"epoch", "index", "seed", "num_examples"} (index = global examples consumed in this
  epoch); `BatchIterator(..., state=s)` or `restore(s)` resumes exactly where it stopped.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from fairjax.data.layout import DEFAULT_BUCKETS, Episode, bucket_for, collate


class BatchIterator:
    def __init__(self, dataset: Sequence[Any], batch_size: int, *, pad_id: Optional[int] = None,
                 seed: int = 0, shuffle: bool = True, drop_remainder: bool = True,
                 num_epochs: Optional[int] = None, process_index: int = 0, process_count: int = 1,
                 buckets: Optional[Sequence[int]] = DEFAULT_BUCKETS, group_batches: int = 0,
                 extras: bool = False, collate_fn: Optional[Callable[..., dict]] = None,
                 length_fn: Optional[Callable[[Any], tuple[int, int]]] = None,
                 state: Optional[dict] = None):
        """collate_fn(items, pad_to=T, state_pad_to=S, batch_size=b) -> dict; default: layout.collate
        with `pad_id` (required then). length_fn(item) -> (tokens, states); default: Episode sizes."""
        n = len(dataset)
        if batch_size <= 0 or batch_size % process_count:
            raise ValueError(f"batch_size={batch_size} must be a positive multiple of process_count={process_count}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} not in [0, {process_count})")
        if n == 0:
            raise ValueError("BatchIterator needs a non-empty dataset")
        if drop_remainder and n < batch_size:
            raise ValueError(f"the data has {n} examples, fewer than one batch "
                             f"(--config.optim.batch_size={batch_size}): lower the batch size "
                             "or add data")
        if collate_fn is None and pad_id is None:
            raise ValueError("pass pad_id (for layout.collate) or a collate_fn")
        self.dataset, self.batch_size = dataset, batch_size
        self.local_batch = batch_size // process_count
        self.seed, self.shuffle, self.drop_remainder = int(seed), shuffle, drop_remainder
        self.num_epochs = num_epochs
        self.process_index, self.process_count = process_index, process_count
        self.buckets, self.group_batches, self.extras = buckets, group_batches, extras
        self.pad_id = pad_id
        self.collate_fn = collate_fn
        self.length_fn = length_fn or (lambda e: (e.length, e.num_states))
        self._lengths = dataset.lengths() if hasattr(dataset, "lengths") else None
        self.epoch, self.index = 0, 0
        self._order_cache: tuple[int, np.ndarray] | None = None
        if state is not None:
            self.restore(state)

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        return {"epoch": int(self.epoch), "index": int(self.index), "seed": self.seed,
                "num_examples": len(self.dataset)}

    def restore(self, state: dict) -> None:
        for key in ("epoch", "index", "seed", "num_examples"):
            if key not in state:
                raise ValueError(f"iterator state is missing key {key!r}: {state}")
        if int(state["seed"]) != self.seed or int(state["num_examples"]) != len(self.dataset):
            raise ValueError(f"iterator state {state} does not match this iterator (seed={self.seed}, "
                             f"num_examples={len(self.dataset)}); the data or seed changed")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

    # ------------------------------------------------------------------ order
    def batches_per_epoch(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_remainder else -(-n // self.batch_size)

    def _length(self, i: int) -> np.ndarray:
        if self._lengths is not None:
            return self._lengths[i]
        return np.asarray(self.length_fn(self.dataset[i]))

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Global example order [N] for `epoch` (identical on every process)."""
        if self._order_cache is not None and self._order_cache[0] == epoch:
            return self._order_cache[1]
        n = len(self.dataset)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.group_batches > 0:
            win = self.group_batches * self.batch_size
            lengths = np.asarray([self._length(i)[0] for i in range(n)])
            chunks = []
            for s in range(0, n, win):
                w = order[s:s + win]
                w = w[np.argsort(lengths[w], kind="stable")]
                chunks.extend(w[k:k + self.batch_size] for k in range(0, len(w), self.batch_size))
            full = [c for c in chunks if len(c) == self.batch_size]
            tail = [c for c in chunks if len(c) < self.batch_size]
            perm = rng.permutation(len(full)) if self.shuffle else np.arange(len(full))
            order = np.concatenate([full[k] for k in perm] + tail) if full else np.concatenate(tail)
        self._order_cache = (epoch, order)
        return order

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        n = len(self.dataset)
        if self.index >= self.batches_per_epoch() * self.batch_size or self.index >= n:
            self.epoch, self.index = self.epoch + 1, 0
        if self.num_epochs is not None and self.epoch >= self.num_epochs:
            raise StopIteration
        order = self.epoch_order(self.epoch)
        global_idx = order[self.index:self.index + self.batch_size]
        self.index += self.batch_size
        lens = np.stack([self._length(int(i)) for i in global_idx])
        T = bucket_for(int(lens[:, 0].max()), self.buckets)
        S = bucket_for(int(lens[:, 1].max()), self.buckets)
        lo = self.process_index * self.local_batch
        local = [self.dataset[int(i)] for i in global_idx[lo:lo + self.local_batch]]
        if self.collate_fn is not None:
            return self.collate_fn(local, pad_to=T, state_pad_to=S, batch_size=self.local_batch)
        if not local:  # this process's rows of a short final batch are all padding
            local = [_EMPTY]
        return collate(local, self.pad_id, pad_to=T, state_pad_to=S, extras=self.extras,
                       batch_size=self.local_batch)


_EMPTY = Episode(tokens=np.zeros(0, np.int32), state_idxs=np.zeros(1, np.int32),
                 action_idxs=np.zeros(0, np.int32), rewards=np.zeros(0, np.float32),
                 terminals=np.ones(1, np.int32), response_mask=np.zeros(0, np.int32),
                 prompt_mask=np.zeros(0, np.int32), sequence_reward=0.0)
