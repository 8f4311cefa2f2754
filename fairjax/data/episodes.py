"""Job-posting episode batches for training: the default `build_data` of an objective.

`episode_data(data, batching, tok, train_path, eval_path, trunc, ...)` reads the postings (`data`:
the typed `config.data` block, `fairjax.data.config.DataConfig`: a file or TFDS directory,
`fairjax.data.sources`; `batching`: rows per step and seed), lays them out as episodes
(`JobRewriteTask`; a custom task's observations with `data.task`) and returns
(train BatchIterator over global optimizer steps, eval factory or None, steps per epoch).
Objectives adapt it with hooks: `select` filters the dataset, `prepare(train_episodes) ->
(train_episodes, collate_fn)` resamples and/or adds batch fields (A-LoL advantages, PHF token
scores); `extras` collates rewards and the other per-episode extras.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable, Optional

import jax

from fairjax.data import packing, sources
from fairjax.data.batching import BatchIterator
from fairjax.data.config import Batching, DataConfig
from fairjax.data.jobs import DataError, JobsDataset
from fairjax.data.layout import bucket_for
from fairjax.data.task import EpisodeDataset, JobRewriteTask
from fairjax.errors import ConfigError


def iterators(data: DataConfig, batching: Batching, train: list, eval_: Optional[list],
              train_collate_fn=None, **common) -> tuple:
    """(train BatchIterator of `batching.rows_per_step` rows per step (shuffled by `data.shuffle`
    and `batching.seed`), eval factory of `batching.batch_size` rows or None, steps per epoch)
    over laid-out examples; `common`: the collate options (pad_id, buckets, extras, collate_fn);
    `train_collate_fn` replaces collate_fn for the train rows only (packed rows)."""
    common.update(process_index=jax.process_index(), process_count=jax.process_count())
    train_kw = dict(common, collate_fn=train_collate_fn or common.get("collate_fn"))
    train_it = BatchIterator(train, batching.rows_per_step, seed=batching.seed,
                             shuffle=data.shuffle, **train_kw)
    eval_fn = None
    if eval_ is not None:
        eval_fn = lambda: BatchIterator(eval_, batching.batch_size, shuffle=False,  # noqa: E731
                                        num_epochs=1, drop_remainder=False, **common)
    return train_it, eval_fn, train_it.batches_per_epoch()


def episode_data(data: DataConfig, batching: Batching, tok, train_path: str,
                 eval_path: Optional[str], trunc, *,
                 extras: bool = False,
                 select: Optional[Callable[[JobsDataset, str], JobsDataset]] = None,
                 prepare: Optional[Callable[[list], tuple[list, Optional[Callable]]]] = None,
                 need_reward: bool = True):
    """Episodes of the train (and eval) postings as batch iterators (module docstring)."""
    def episodes(path, key):
        if data.task:
            if select is not None:
                raise ConfigError(f"--config.data.task={data.task}: this objective selects "
                                  "job postings by reward (e.g. PHF filtering); a custom task "
                                  "cannot be filtered, use another objective")
            eps = EpisodeDataset(tok, sources.task_observations(path, data),
                                 truncation=trunc).prepare()
        else:
            # an objective that trains on no reward (need_reward=False: its capability) takes
            # postings without one (the layout's reward slot is 0)
            no_reward = not need_reward
            ds, _ = sources.read_jobs(path, data, key, need_reward=not no_reward)
            if select is not None:
                ds = select(ds, path)
            default = 0.0 if no_reward else None
            eps = JobRewriteTask(ds, default_reward=default).episodes(tok, trunc).prepare()
        if len(eps) == 0:
            raise DataError(f"{path}: no example fits the layout ({eps.stats.report()}); raise "
                            f"--config.data.max_len (now {data.max_len})")
        return eps

    train_eps = episodes(train_path, "train")
    layout = {"train": train_eps.stats}
    collate_fn = None
    if prepare is not None:
        train_eps, collate_fn = prepare(train_eps)
    eval_eps = episodes(eval_path, "eval") if eval_path else None
    if eval_eps is not None:
        layout["eval"] = eval_eps.stats
    train_collate = None
    if data.pack:
        if extras or collate_fn is not None:
            raise ConfigError("--config.data.pack=True: this objective adds per-episode batch "
                              "fields that packed rows do not carry; set data.pack=False")
        train_eps, train_collate = packed_rows(data, batching, train_eps, tok.pad_id, train_path)
    out = iterators(data, batching, train_eps, eval_eps, pad_id=tok.pad_id, buckets=data.buckets,
                    extras=extras, collate_fn=collate_fn, train_collate_fn=train_collate)
    out[0].layout_stats = layout  # what truncation to data.max_len did, per split (run summary)
    return out


def packed_rows(data: DataConfig, batching: Batching, eps, pad_id: int,
                path: str) -> tuple[list, Callable]:
    """Train episodes packed into rows of `data.max_len` tokens (`fairjax.data.packing`) and the
    collate of those rows; logs the fill ratio against one episode per row. Eval stays unpacked
    (its metrics stay comparable with unpacked runs)."""
    episodes = [eps[i] for i in range(len(eps))]
    try:
        rows = packing.pack(episodes, data.max_len)
    except ValueError as e:
        raise DataError(f"{path}: --config.data.pack=True: {e}") from e
    per_step = batching.rows_per_step
    if len(rows) < per_step:
        raise DataError(f"{path}: --config.data.pack=True packs {len(episodes)} episodes into "
                        f"{len(rows)} rows of {data.max_len} tokens, fewer than the "
                        f"{per_step} rows of one step (optim.batch_size * optim.grad_accum); "
                        "lower optim.batch_size or set data.pack=False")
    buckets = data.buckets
    width = lambda rs: max(bucket_for(r.length, buckets) for r in rs)  # noqa: E731
    logging.info("data.pack: %d episodes -> %d rows of <= %d tokens; real tokens per padded "
                 "token %.3f (one episode per row: %.3f)", len(episodes), len(rows),
                 data.max_len, packing.fill_ratio(rows, width(rows)),
                 packing.fill_ratio(episodes, width(episodes)))
    return rows, functools.partial(packing.collate_packed, pad_id=pad_id)
