"""The data block of a run config (`config.data`, configs/common.py) as a typed, frozen dataclass.

`DataConfig.from_block(cfg.data)` converts it once (`fairjax.typed_config.typed_block`): a field
the block does not name takes its default (run dirs saved by older versions load), an unknown
field is a ConfigError naming `config.data.<field>`, a bad value one naming the key. The data code
(`fairjax.data.sources`, `fairjax.data.episodes`, the objectives' `build_data` hooks) receives
this record, never the whole run config; what it needs from other blocks (rows per step, the
seed) comes as a `Batching`.

The allowed values are those of the modules that implement them: `data.on_error` is
`fairjax.data.jobs.ON_ERROR`, `data.task` is parsed by `fairjax.data.task.parse_task_spec`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from fairjax.data.jobs import ON_ERROR
from fairjax.data.task import parse_task_spec
from fairjax.errors import ConfigError
from fairjax.typed_config import check_choice, typed_block

BOOLS = (False, True)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """`config.data` (every field is documented in configs/common.py)."""

    train: str = ""  # train JSONL/CSV file or TFDS dir; "" = the demo corpus in RUN_DIR/data
    eval: str = ""  # eval file or TFDS dir; "" = the demo corpus's eval split (or none)
    task: str = ""  # "module:factory" of a custom task; "" = the job-posting task
    text_field: str = "text"  # record field holding the posting text
    max_len: int = 512  # tokens per episode after truncation
    buckets: tuple[int, ...] = (128, 256, 384, 512)  # padded lengths, increasing
    on_error: str = "raise"  # bad record: raise | skip (jobs.ON_ERROR)
    demo_postings: int = 240  # size of the generated demo corpus
    shuffle: bool = True  # shuffle the train rows by (seed, epoch)
    pack: bool = False  # pack train episodes into rows of max_len tokens

    def __post_init__(self):
        buckets = () if self.buckets is None else tuple(self.buckets)
        if any(isinstance(b, bool) or int(b) != b or b <= 0 for b in buckets) \
                or list(buckets) != sorted(set(buckets)):
            raise ConfigError(f"config.data.buckets={buckets}; expected increasing positive "
                              "lengths")
        object.__setattr__(self, "buckets", tuple(int(b) for b in buckets))
        check_choice("data.on_error", self.on_error, ON_ERROR)
        check_choice("data.shuffle", self.shuffle, BOOLS)
        check_choice("data.pack", self.pack, BOOLS)
        for name in ("max_len", "demo_postings"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"config.data.{name}={v!r}; expected an integer > 0")
        for name in ("train", "eval", "task", "text_field"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"config.data.{name}={getattr(self, name)!r}; expected a string")
        if not self.text_field:
            raise ConfigError("config.data.text_field is empty; name the record field holding "
                              "the posting text")
        if self.task:
            try:
                parse_task_spec(self.task)
            except ValueError as e:
                raise ConfigError(f"config.data.task={e}") from None

    @classmethod
    def from_block(cls, block: Any) -> "DataConfig":
        """The typed record of `config.data` (a ConfigDict, mapping, or a DataConfig as it is)."""
        return typed_block(block, cls, "data")

    def replace(self, **changes: Any) -> "DataConfig":
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Batching:
    """What batching reads from outside the data block: `optim.batch_size` (global rows per
    micro-batch), `optim.grad_accum` (micro-batches per optimizer step) and the run `seed`
    (shuffling order, with the epoch)."""

    batch_size: int
    grad_accum: int = 1
    seed: int = 0

    def __post_init__(self):
        for name in ("batch_size", "grad_accum"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v <= 0:
                raise ConfigError(f"config.optim.{name}={v!r}; expected an integer > 0")

    @property
    def rows_per_step(self) -> int:
        """Rows of one optimizer step: batch_size * grad_accum."""
        return self.batch_size * self.grad_accum
