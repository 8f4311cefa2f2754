"""TFDS builder for job postings: JSONL/CSV -> `array_record` files, read with `tfds.data_source`.

No TensorFlow needed (it is not installed): `GeneratorBasedBuilder.download_and_prepare` with
`file_format="array_record"` writes the records through the `array_record` package and its own
example serializer, and `tfds.data_source` / `builder.as_data_source` read them back as random-
access sequences (TFDS's TF-free path; `as_dataset` would need TF and is not used). One caveat: the
builder's `_info` builds `tfds.core.DatasetInfo` directly, because `dataset_info_from_configs` looks
for metadata files next to the builder's module, and `code_path` returns None (TFDS would need the
optional `importlib_resources` package to find the module directory, only to look for checksums).

    cfg = JobsBuilderConfig(name="hn", sources={"train": ".../train.jsonl", "eval": ".../eval.jsonl"})
    prepare_jobs(cfg, data_dir)                       # once; later calls reuse the files
    src = jobs_data_source(data_dir, "train", cfg)    # len(), src[i] -> dict of str/float
    it = ResumableIterator(src); ...; it.state() / ResumableIterator(src, state=...)

Or one `source` file split by `fractions` with the same hashed rule as `jobs.split_of`.
Each record: id, prompt, response (cleaned text), reward (float32, NaN when absent), location,
company, title, technologies (", "-joined), remote ("yes"|"no"|"unknown"), source ("file:line").
TFDS shuffles records by key hash when writing; the record order is fixed for a given input.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Iterator, Mapping, Optional

import numpy as np
import tensorflow_datasets as tfds

from fairjax.data.jobs import DEFAULT_FRACTIONS, JobExample, make_example, read_records, split_of

TEXT_FEATURES = ("id", "prompt", "response", "location", "company", "title", "technologies",
                 "remote", "source")


@dataclasses.dataclass(eq=False)
class JobsBuilderConfig(tfds.core.BuilderConfig):
    """sources: {split: path} of already-split files, or `source` + `fractions` (hashed split)."""

    sources: Optional[Mapping[str, str]] = None
    source: Optional[str] = None
    fractions: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_FRACTIONS))
    text_field: str = "text"
    on_error: str = "raise"
    extract: bool = True

    def split_files(self) -> dict[str, tuple[str, Optional[str]]]:
        """{split: (path, split-to-keep or None)}."""
        if (self.sources is None) == (self.source is None):
            raise ValueError(f"JobsBuilderConfig {self.name!r}: give exactly one of `sources` "
                             "({split: path}) or `source` (+ `fractions`)")
        if self.sources is not None:
            return {k: (os.fspath(v), None) for k, v in self.sources.items()}
        return {k: (os.fspath(self.source), k) for k in self.fractions}


class FairjaxJobs(tfds.core.GeneratorBasedBuilder):
    """Job postings as prompt/response records (fairjax.data.jobs semantics)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}
    BUILDER_CONFIGS = [JobsBuilderConfig(name="default", description="set sources or source")]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        """No checksums/metadata files live next to this module. TFDS's default looks the module
        directory up through the optional `importlib_resources` package (absent here), so we
        answer None, which makes TFDS skip checksum lookup."""
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        feats = {k: tfds.features.Text() for k in TEXT_FEATURES}
        feats["reward"] = np.float32
        return tfds.core.DatasetInfo(builder=self, description=__doc__.split("\n")[0],
                                     features=tfds.features.FeaturesDict(feats))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(path, keep)
                for split, (path, keep) in self.builder_config.split_files().items()}

    def _generate_examples(self, path: str, keep: Optional[str]):
        cfg = self.builder_config
        for rec in read_records(path, text_field=cfg.text_field, on_error=cfg.on_error):
            if keep is not None and split_of(rec["id"], cfg.fractions) != keep:
                continue
            yield rec["id"], example_to_record(make_example(rec, cfg.extract))


def example_to_record(ex: JobExample) -> dict[str, Any]:
    m = ex.metadata
    tech = m.get("technologies") or []
    remote = {True: "yes", False: "no"}.get(m.get("remote"), "unknown")
    return {"id": ex.id, "prompt": ex.prompt, "response": ex.response,
            "reward": np.float32(np.nan if ex.reward is None else ex.reward),
            "location": m.get("location") or "", "company": m.get("company") or "",
            "title": m.get("title") or "", "technologies": ", ".join(tech), "remote": remote,
            "source": m.get("source") or ""}


def prepare_jobs(config: JobsBuilderConfig, data_dir: str | os.PathLike) -> FairjaxJobs:
    """Build (once) the array_record dataset for `config` under `data_dir`; returns the builder."""
    config.split_files()  # validate early, with a clear message
    builder = FairjaxJobs(config=config, data_dir=os.fspath(data_dir), file_format="array_record")
    builder.download_and_prepare()
    return builder


class JobsRecordSource:
    """Random-access view of one split with text decoded to str and a NaN reward as None."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"record {i} out of range for a split of {len(self)} records")
        raw = self.source[i % len(self)]
        out = {k: (v.decode("utf-8") if isinstance(v, bytes) else v) for k, v in raw.items()}
        r = float(out["reward"])
        out["reward"] = None if math.isnan(r) else r
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(len(self)))


def jobs_data_source(data_dir: str | os.PathLike, split: str,
                     config: Optional[JobsBuilderConfig] = None,
                     config_name: Optional[str] = None) -> JobsRecordSource:
    """Open a prepared split with `tfds.data_source` (prepares it first when `config` is given).

    Without `config`, the prepared config directory `config_name` (optional when only one exists)
    under data_dir/fairjax_jobs is read from its files (`tfds.builder_from_directory`).
    Prepared data is reused as is: after editing the source files, use a new config name.
    """
    data_dir = os.fspath(data_dir)
    if config is not None:
        prepare_jobs(config, data_dir)
        src = tfds.data_source("fairjax_jobs", split=split, data_dir=data_dir, download=False,
                               builder_kwargs={"config": config, "file_format": "array_record"})
        return JobsRecordSource(src)
    root = os.path.join(data_dir, "fairjax_jobs")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: no prepared fairjax_jobs dataset (run prepare_jobs first)")
    found = {c: os.path.join(root, c, v) for c in sorted(os.listdir(root))
             if os.path.isdir(os.path.join(root, c)) for v in sorted(os.listdir(os.path.join(root, c)))
             if os.path.isfile(os.path.join(root, c, v, "dataset_info.json"))}
    if config_name is None and len(found) == 1:
        config_name = next(iter(found))
    if config_name not in found:
        raise FileNotFoundError(f"{root}: prepared configs are {sorted(found)}; "
                                f"pass config_name= one of them (got {config_name!r})")
    builder = tfds.builder_from_directory(found[config_name])
    return JobsRecordSource(builder.as_data_source(split=split))


class ResumableIterator:
    """Sequential iterator over a random-access source whose position is checkpointable.

    state() -> {"index": next position, "epoch": passes completed}; `repeat=True` wraps around.
    """

    def __init__(self, source, *, repeat: bool = False, state: Optional[dict] = None):
        self.source, self.repeat = source, repeat
        self.index, self.epoch = 0, 0
        if state is not None:
            self.restore(state)

    def state(self) -> dict:
        return {"index": self.index, "epoch": self.epoch}

    def restore(self, state: dict) -> None:
        if not {"index", "epoch"} <= set(state):
            raise ValueError(f"iterator state needs 'index' and 'epoch', got {state}")
        if not 0 <= int(state["index"]) <= len(self.source):
            raise ValueError(f"iterator index {state['index']} outside [0, {len(self.source)}]")
        self.index, self.epoch = int(state["index"]), int(state["epoch"])

    def __iter__(self) -> "ResumableIterator":
        return self

    def __next__(self):
        if self.index >= len(self.source):
            if not self.repeat or len(self.source) == 0:
                raise StopIteration
            self.index, self.epoch = 0, self.epoch + 1
        item = self.source[self.index]
        self.index += 1
        return item
