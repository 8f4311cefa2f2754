"""Trainer inputs and records: metrics/TensorBoard without duplicate rows after a resume, skipped
records counted, TFDS array_record dirs and custom tasks (`data.task`) as training data."""
import json

import numpy as np
import pytest

from fairjax import faults
from fairjax.data.task import TextObservation
from fairjax.io import run_dir as rd
from fairjax.train.build import train

from trainer_fixtures import load_config, small_config, toy_setup


def _rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / rd.METRICS_FILE).read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s")} for r in rows]


def test_resume_leaves_no_duplicate_metric_rows(tmp_path, monkeypatch):
    cfg = small_config("bc", **{"train.log_every": 1, "train.save_every": 3, "train.eval_every": 2,
                                "train.tensorboard": True})
    train(cfg, tmp_path / "full", setup=toy_setup(cfg))
    monkeypatch.setenv(faults.FAULT_ENV, "bc@5:0:raise")  # crash after step 5; checkpoint at 3
    with pytest.raises(faults.InjectedFault):
        train(cfg, tmp_path / "crash", setup=toy_setup(cfg))
    assert max(r["step"] for r in _rows(tmp_path / "crash")) == 5
    monkeypatch.delenv(faults.FAULT_ENV)
    train(cfg, tmp_path / "crash", setup=toy_setup(cfg))
    assert _rows(tmp_path / "crash") == _rows(tmp_path / "full")
    scalars = rd.read_tb_scalars(tmp_path / "crash" / rd.TB_DIR)
    keys = [(tag, step) for tag, step, _, _ in scalars]
    assert len(keys) == len(set(keys))
    assert sorted(keys) == sorted((t, s) for t, s, _, _ in rd.read_tb_scalars(
        tmp_path / "full" / rd.TB_DIR))


def _postings(tmp_path, n_bad=0, n=24):
    from fairjax.data.demo import write_demo

    write_demo(tmp_path / "demo", n_postings=n, seed=0)
    lines = (tmp_path / "demo" / "jobs_train.jsonl").read_text().splitlines()
    lines += ['{"id": "bad%d", "text": 3}' % i for i in range(n_bad)]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


TINY = {"train.steps": 2, "train.eval_every": 0, "train.save_every": 2, "optim.batch_size": 4,
        "data.max_len": 64, "data.buckets": (64,), "model.demo_vocab_size": 300}


def test_skipped_records_are_counted_in_log_and_summary(tmp_path, capsys):
    path = _postings(tmp_path, n_bad=3)
    cfg = small_config("bc", **TINY, **{"data.train": str(path), "data.on_error": "skip"})
    res = train(cfg, tmp_path / "run")
    assert [s["skipped"] for s in res.data_stats] == [3]
    assert "3 skipped" in capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / rd.SUMMARY_FILE).read_text())
    assert summary["data"][0]["skipped"] == 3 and summary["data"][0]["path"] == str(path)
    assert summary["data"][0]["errors"][0].startswith(f"{path}:")
    # max_len 64 < every demo prompt (which quotes its posting): all prompts cut, and said so
    layout = summary["data"][0]["layout"]
    kept = summary["data"][0]["kept"]
    assert layout["total"] == kept and layout["prompt_truncated_share"] == 1.0
    assert f"prompt cut in 100% of {kept} episodes" in summary["data"][0]["line"]


def test_default_lengths_keep_every_demo_posting_whole(tmp_path):
    """With the shipped defaults (data.max_len, demo tokenizer) the policy sees the whole quoted
    original of every demo posting, train and eval (issue: the prompt used to be cut to nothing)."""
    from fairjax.data import sources
    from fairjax.data.config import DataConfig
    from fairjax.data.layout import Truncation
    from fairjax.data.task import JobRewriteTask
    from fairjax.data.demo import write_demo
    from fairjax.train.build import demo_tokenizer

    cfg = load_config("ilql")
    paths = write_demo(tmp_path / "demo", n_postings=cfg.data.demo_postings, seed=cfg.seed)
    data = DataConfig.from_block(cfg.data)
    tok = demo_tokenizer(sources.texts(str(paths["train"]), data), cfg.model.demo_vocab_size)
    for split in ("train", "eval"):
        ds, _ = sources.read_jobs(str(paths[split]), data, split)
        eps = JobRewriteTask(ds).episodes(tok, Truncation(max_len=cfg.data.max_len)).prepare()
        assert eps.stats.total == len(ds) > 0
        assert eps.stats.shares() == {"prompt_truncated_share": 0.0,
                                      "response_truncated_share": 0.0, "dropped_share": 0.0}


def test_tfds_directory_is_training_data(tmp_path):
    from fairjax.data.tfds_jobs import JobsBuilderConfig, prepare_jobs

    path = _postings(tmp_path)
    prepare_jobs(JobsBuilderConfig(name="t", sources={"train": str(path)}), tmp_path / "tfds")
    a = train(small_config("bc", **TINY, **{"data.train": str(path)}), tmp_path / "a")
    b = train(small_config("bc", **TINY, **{"data.train": str(tmp_path / "tfds")}), tmp_path / "b")
    assert b.data_stats[0]["kept"] == a.data_stats[0]["kept"] > 0
    assert np.isfinite(b.metrics["loss"]) and b.step == 2
    # TFDS stores the records in its own (hashed) order: same data, so the first loss matches
    # an epoch-shuffled read only loosely; the examples themselves are identical
    from fairjax.data import sources
    from fairjax.data.config import DataConfig

    data = DataConfig.from_block(small_config("bc", **TINY).data)
    ja, _ = sources.read_jobs(str(path), data)
    jb, _ = sources.read_jobs(str(tmp_path / "tfds"), data)
    key = lambda e: e.id  # noqa: E731
    assert [(e.id, e.prompt, e.response, e.reward) for e in sorted(ja, key=key)] == \
        [(e.id, e.prompt, e.response, e.reward) for e in sorted(jb, key=key)]


def make_task(path, data):
    """A custom task for `data.task`: each line of `path` is one utterance pair; `data` is the
    run's typed data block."""
    from fairjax.data.config import DataConfig

    assert isinstance(data, DataConfig) and data.task == f"{__name__}:make_task"
    lines = [line for line in open(path, encoding="utf-8").read().splitlines() if line]
    return [TextObservation(((f"Q: {line}", None), (f" A: {line[::-1]}", 1.0 + i % 3)))
            for i, line in enumerate(lines)]


def test_custom_task_plugs_in_through_the_config(tmp_path):
    path = tmp_path / "qa.txt"
    path.write_text("\n".join(f"question number {i} about jobs" for i in range(16)) + "\n")
    cfg = small_config("bc", **TINY, **{"data.train": str(path),
                                        "data.task": f"{__name__}:make_task"})
    res = train(cfg, tmp_path / "run")
    assert res.step == 2 and np.isfinite(res.metrics["loss"])
    assert res.data_stats[0]["kept"] == 16
    cfg = small_config("bc", **TINY, **{"data.train": str(path), "data.task": f"{__name__}:nope"})
    with pytest.raises(ValueError, match="--config.data.task=.*has no callable 'nope'"):
        train(cfg, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("algorithm", ["phf", pytest.param("ilql", marks=pytest.mark.slow)])
def test_skipped_records_are_counted_for_objectives_that_train_on_a_reward(tmp_path, algorithm):
    """The reward build reads (and skips) the records first; the counts of that first read, not
    of the rewarded copy, reach the log line and summary.json."""
    path = _postings(tmp_path, n_bad=3)
    cfg = small_config(algorithm, **TINY, **{"data.train": str(path), "data.on_error": "skip",
                                             "reward.scorer": "gender_coded",
                                             "reward.cache_dir": str(tmp_path / "cache")})
    res = train(cfg, tmp_path / "run")
    assert [s["skipped"] for s in res.data_stats] == [3]
    summary = json.loads((tmp_path / "run" / rd.SUMMARY_FILE).read_text())
    assert summary["data"][0]["skipped"] == 3 and summary["data"][0]["path"] == str(path)
    assert "3 skipped" in summary["data"][0]["line"]
