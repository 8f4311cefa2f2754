"""What `data.train` / `data.eval` / `data.task` name, read for the trainer.

* a JSONL/CSV file of postings (`fairjax.data.jobs`);
* a prepared TFDS array_record dataset directory (`fairjax.data.tfds_jobs.prepare_jobs`): the
  `data_dir` given to `prepare_jobs`, its `fairjax_jobs/<config>` directory, or the versioned
  directory holding `dataset_info.json`; `data.train` reads split "train", `data.eval` split "eval";
* `data.task = "module:factory"`: a custom task. `factory(path, config)` returns a list dataset
  (len + getitem) of `fairjax.data.task.Observation`s for the file/directory `path`; the trainer
  lays them out (`EpisodeDataset`) and batches them like the job task.

Records skipped with `data.on_error=skip` are counted in `SourceStats` (logged by the trainer and
written to the run summary).
"""
from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any, Callable, Optional

from fairjax.data.jobs import DataError, JobExample, JobsDataset
from fairjax.errors import ConfigError

SPLIT_OF_KEY = {"train": "train", "eval": "eval"}


@dataclasses.dataclass
class SourceStats:
    """Records read from one source: lines seen, kept, skipped (first errors as "file:line: why")."""

    path: str
    lines: int = 0
    kept: int = 0
    skipped: int = 0
    errors: list = dataclasses.field(default_factory=list)

    def line(self) -> str:
        text = f"data {self.path}: {self.kept} records kept, {self.skipped} skipped"
        if self.errors:
            text += f" (first: {self.errors[0]})"
        return text

    def to_dict(self) -> dict:
        return {"path": self.path, "lines": self.lines, "kept": self.kept,
                "skipped": self.skipped, "errors": list(self.errors[:20]), "line": self.line()}


def is_tfds_dir(path: str) -> bool:
    """A directory that holds a prepared fairjax_jobs dataset (any of the three spellings)."""
    return os.path.isdir(path) and _tfds_root(path) is not None


def _tfds_root(path: str) -> Optional[tuple[str, str]]:
    """("data_dir", data_dir) | ("builder", versioned dir) | None."""
    if os.path.isfile(os.path.join(path, "dataset_info.json")):
        return "builder", path
    if os.path.isdir(os.path.join(path, "fairjax_jobs")):
        return "data_dir", path
    versions = sorted(d for d in os.listdir(path)
                      if os.path.isfile(os.path.join(path, d, "dataset_info.json")))
    if versions:
        return "builder", os.path.join(path, versions[-1])
    return None


def _tfds_examples(path: str, split: str) -> list[JobExample]:
    from fairjax.data import tfds_jobs

    kind, where = _tfds_root(path)
    try:
        if kind == "data_dir":
            src = tfds_jobs.jobs_data_source(where, split)
        else:
            import tensorflow_datasets as tfds

            src = tfds_jobs.JobsRecordSource(
                tfds.builder_from_directory(where).as_data_source(split=split))
    except (KeyError, ValueError) as e:
        raise DataError(f"{path}: the TFDS dataset has no split {split!r} ({e})") from None
    out = []
    for rec in src:
        meta = {k: rec[k] for k in ("location", "company", "title", "source") if rec.get(k)}
        if rec.get("technologies"):
            meta["technologies"] = [t.strip() for t in rec["technologies"].split(",")]
        out.append(JobExample(id=rec["id"], prompt=rec["prompt"], response=rec["response"],
                              reward=rec["reward"], metadata=meta))
    return out


def read_jobs(path: str, cfg: Any, key: str = "train",
              need_reward: bool = True) -> tuple[JobsDataset, SourceStats]:
    """The postings of `data.<key>` = `path` (file or TFDS directory) and their read counts.
    An empty result, or a record without reward when `need_reward`, is a DataError naming the
    file (and line) and the fix."""
    flag = f"--config.data.{key}"
    if os.path.isdir(path):
        if not is_tfds_dir(path):
            raise DataError(f"{flag}={path}: a directory, but not a prepared TFDS dataset "
                            "(fairjax.data.tfds_jobs.prepare_jobs); give a JSONL/CSV file")
        examples = _tfds_examples(path, SPLIT_OF_KEY[key])
        ds = JobsDataset(examples)
        stats = SourceStats(path, lines=len(examples), kept=len(examples))
    else:
        ds = JobsDataset.from_file(path, text_field=cfg.data.text_field,
                                   on_error=cfg.data.on_error)
        r = ds.read_stats
        stats = SourceStats(path, lines=r.lines, kept=r.kept, skipped=r.skipped,
                            errors=list(r.errors))
    if len(ds) == 0:
        why = (f"all {stats.skipped} records were skipped (first: {stats.errors[0]})"
               if stats.skipped else "it holds no records")
        raise DataError(f"{path}: no training examples: {why}; check the file or "
                        f"`--config.data.text_field` (now {cfg.data.text_field!r})")
    if need_reward:
        missing = [e for e in ds if e.reward is None]
        if missing:
            first = missing[0].id
            raise DataError(f"{path}: no 'reward' field ({len(missing)} of {len(ds)} records lack "
                            f"one, first: id {first!r}); train on `--config.reward.scorer=diversity` "
                            f"(scored when the data is built) or add rewards with `python -m fairjax.score --texts={path} "
                            f"--annotate=OUT.jsonl` and train on OUT.jsonl")
    return ds, stats


def task_factory(spec: str) -> Callable[[str, Any], Any]:
    """`"package.module:factory"` -> the factory (ConfigError naming `--config.data.task`)."""
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise ConfigError(f"--config.data.task={spec}: expected 'module:factory', e.g. "
                          "'my_pkg.tasks:make_dataset'")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(f"--config.data.task={spec}: cannot import {mod_name!r} ({e}); put it "
                          "on PYTHONPATH") from None
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise ConfigError(f"--config.data.task={spec}: {mod_name} has no callable {attr!r}")
    return fn


def task_observations(spec: str, path: str, cfg: Any):
    """The custom task's list dataset of observations for `path` (checked: non-empty, items are
    Observations)."""
    from fairjax.data.task import ListDataset, Observation

    data = task_factory(spec)(path, cfg)
    if not isinstance(data, ListDataset):
        raise ConfigError(f"--config.data.task={spec}: the factory returned a "
                          f"{type(data).__name__}; return a list dataset (len + getitem) of "
                          "Observations")
    if len(data) == 0:
        raise DataError(f"{path}: the task {spec} found no examples in it")
    if not isinstance(data[0], Observation):
        raise ConfigError(f"--config.data.task={spec}: item 0 is a {type(data[0]).__name__}, "
                          "which has no to_sequence() -> (list[(text, reward|None)], terminal)")
    return data


def texts(path: str, cfg: Any) -> list[str]:
    """Every text of the train data (the demo tokenizer is trained on them): prompt + posting,
    or a custom task's utterances."""
    if cfg.data.task:
        data = task_observations(cfg.data.task, path, cfg)
        return ["\n".join(text for text, _ in data[i].to_sequence()[0]) for i in range(len(data))]
    ds, _ = read_jobs(path, cfg, "train", need_reward=False)
    return [e.prompt + "\n" + e.response for e in ds]


def read_counts(cfg: Any, train_path: str, eval_path: Optional[str],
                layout: Optional[dict] = None) -> list[dict]:
    """`SourceStats.to_dict()` of the train (and eval) source: records kept / skipped; with
    `layout` ({split: data.layout.LayoutStats}), what truncation to `data.max_len` did."""
    out = []
    for key, path in (("train", train_path), ("eval", eval_path)):
        if not path:
            continue
        if cfg.data.task:
            n = len(task_observations(cfg.data.task, path, cfg))
            entry = SourceStats(path, lines=n, kept=n).to_dict()
        else:
            entry = read_jobs(path, cfg, key, need_reward=False)[1].to_dict()
        stats = (layout or {}).get(key)
        if stats is not None:
            entry["layout"] = {**stats.as_dict(), **stats.shares()}
            entry["layout"]["dropped_ids"] = entry["layout"]["dropped_ids"][:20]
            entry["line"] += (f"; max_len {cfg.data.max_len}: prompt cut in "
                              f"{entry['layout']['prompt_truncated_share']:.0%} of "
                              f"{stats.total} episodes, response cut in "
                              f"{entry['layout']['response_truncated_share']:.0%}")
        out.append(entry)
    return out
