"""What `data.train` / `data.eval` / `data.task` name, read for the trainer.

* a JSONL/CSV file of postings (`fairjax.data.jobs`);
* a prepared TFDS array_record dataset directory (`fairjax.data.tfds_jobs.prepare_jobs`): the
  `data_dir` given to `prepare_jobs`, its `fairjax_jobs/<config>` directory, or the versioned
  directory holding `dataset_info.json`; `data.train` reads split "train", `data.eval` split "eval";
* `data.task = "module:factory"`: a custom task. `factory(path, data)` (`data`: the run's
  `fairjax.data.config.DataConfig`) returns a list dataset (len + getitem) of
  `fairjax.data.task.Observation`s for the file/directory `path`; the trainer lays them out
  (`EpisodeDataset`) and batches them like the job task.

Every function here takes the typed data block (`DataConfig`), never the whole run config.

Records skipped with `data.on_error=skip` are counted in `SourceStats` (logged by the trainer and
written to the run summary).
"""
from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any, Callable, Optional

from fairjax.data import tfds_jobs
from fairjax.data.config import DataConfig
from fairjax.data.jobs import DataError, JobExample, JobsDataset
from fairjax.data.task import ListDataset, Observation, parse_task_spec
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


def read_jobs(path: str, data: DataConfig, key: str = "train",
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
        ds = JobsDataset.from_file(path, text_field=data.text_field, on_error=data.on_error)
        r = ds.read_stats
        stats = SourceStats(path, lines=r.lines, kept=r.kept, skipped=r.skipped,
                            errors=list(r.errors))
    if len(ds) == 0:
        why = (f"all {stats.skipped} records were skipped (first: {stats.errors[0]})"
               if stats.skipped else "it holds no records")
        raise DataError(f"{path}: no training examples: {why}; check the file or "
                        f"`--config.data.text_field` (now {data.text_field!r})")
    if need_reward:
        missing = [e for e in ds if e.reward is None]
        if missing:
            first = missing[0].id
            raise DataError(f"{path}: no 'reward' field ({len(missing)} of {len(ds)} records lack "
                            f"one, first: id {first!r}); train on `--config.reward.scorer=diversity` "
                            f"(scored when the data is built) or add rewards with `python -m fairjax.score --texts={path} "
                            f"--annotate=OUT.jsonl` and train on OUT.jsonl")
    return ds, stats


def task_factory(spec: str) -> Callable[[str, DataConfig], Any]:
    """`"package.module:factory"` -> the factory (ConfigError naming `--config.data.task`)."""
    try:
        mod_name, attr = parse_task_spec(spec)
    except ValueError as e:
        raise ConfigError(f"--config.data.task={e}") from None
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(f"--config.data.task={spec}: cannot import {mod_name!r} ({e}); put it "
                          "on PYTHONPATH") from None
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise ConfigError(f"--config.data.task={spec}: {mod_name} has no callable {attr!r}")
    return fn


def task_observations(path: str, data: DataConfig):
    """The list dataset of observations of the custom task `data.task` for `path` (checked:
    non-empty, items are Observations)."""
    spec = data.task
    out = task_factory(spec)(path, data)
    if not isinstance(out, ListDataset):
        raise ConfigError(f"--config.data.task={spec}: the factory returned a "
                          f"{type(out).__name__}; return a list dataset (len + getitem) of "
                          "Observations")
    if len(out) == 0:
        raise DataError(f"{path}: the task {spec} found no examples in it")
    if not isinstance(out[0], Observation):
        raise ConfigError(f"--config.data.task={spec}: item 0 is a {type(out[0]).__name__}, "
                          "which has no to_sequence() -> (list[(text, reward|None)], terminal)")
    return out


def texts(path: str, data: DataConfig) -> list[str]:
    """Every text of the train data (the demo tokenizer is trained on them): prompt + posting,
    or a custom task's utterances."""
    if data.task:
        obs = task_observations(path, data)
        return ["\n".join(text for text, _ in obs[i].to_sequence()[0]) for i in range(len(obs))]
    ds, _ = read_jobs(path, data, "train", need_reward=False)
    return [e.prompt + "\n" + e.response for e in ds]


def read_counts(data: DataConfig, train_path: str, eval_path: Optional[str],
                layout: Optional[dict] = None) -> list[dict]:
    """`SourceStats.to_dict()` of the train (and eval) source: records kept / skipped; with
    `layout` ({split: data.layout.LayoutStats}), what truncation to `data.max_len` did."""
    out = []
    for key, path in (("train", train_path), ("eval", eval_path)):
        if not path:
            continue
        if data.task:
            n = len(task_observations(path, data))
            entry = SourceStats(path, lines=n, kept=n).to_dict()
        else:
            entry = read_jobs(path, data, key, need_reward=False)[1].to_dict()
        stats = (layout or {}).get(key)
        if stats is not None:
            entry["layout"] = {**stats.as_dict(), **stats.shares()}
            entry["layout"]["dropped_ids"] = entry["layout"]["dropped_ids"][:20]
            entry["line"] += (f"; max_len {data.max_len}: prompt cut in "
                              f"{entry['layout']['prompt_truncated_share']:.0%} of "
                              f"{stats.total} episodes, response cut in "
                              f"{entry['layout']['response_truncated_share']:.0%}")
        out.append(entry)
    return out
