"""Relaunch after SIGKILL: the one-command pipeline (configs/ilql.py: BC -> ILQL -> evaluation),
killed once in each stage and relaunched with the same command, ends identical to an uninterrupted
run (params, metrics.jsonl, eval_logs.jsonl), with no duplicate metric rows and a config history."""
import json
import os
import signal
import subprocess
import sys

import jax
import pytest

from fairjax.runs import restore_run

from trainer_fixtures import REPO, assert_trees_equal

ARGS = ["--config=configs/ilql.py", "--config.pipeline.bc_steps=4", "--config.train.steps=4",
        "--config.train.save_every=2", "--config.train.eval_every=0", "--config.train.log_every=1",
        "--config.data.demo_postings=40", "--config.data.max_len=64",
        "--config.data.buckets=(32,64)", "--config.optim.batch_size=4",
        "--config.train.progress=False", "--config.train.tensorboard=False",
        "--config.pipeline.eval_limit=3", "--config.pipeline.eval_n_boot=10",
        "--config.pipeline.adv_weights=(8.0,)", "--config.eval.max_new_tokens=4",
        "--config.stages.eval.batch_size=2", "--config.stages.eval.chunk_batches=1",
        "--config.reward.embedder=tfidf"]


def _run(run_dir, fault=None):
    # one persistent compilation cache for the five launches (same executables, 3x faster)
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(run_dir.parent / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.pop("FAIRJAX_FAULT", None)
    if fault:
        env["FAIRJAX_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "fairjax.train", f"--run_dir={run_dir}", *ARGS],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _metrics(path):
    """metrics.jsonl rows without the wall-clock fields."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s")} for r in rows]


def _params(run_dir):
    """Every trained and frozen array of the last checkpoint (ILQL: policy, Q/V trunks, heads,
    targets)."""
    run = restore_run(run_dir, "latest")
    return jax.tree.leaves((run.params, run.frozen))


@pytest.mark.slow
def test_sigkill_in_each_stage_then_relaunch_matches_uninterrupted_run(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    r = _run(full)
    assert r.returncode == 0, r.stderr[-3000:]
    # BC killed after step 3 (its checkpoint of step 2 exists, step 3 was already logged);
    # ILQL killed after step 1 (before its first checkpoint); evaluation killed after its first block of rows (2 of 3).
    for fault in ("bc@3", "ilql@1", "eval@2"):
        r = _run(killed, fault)
        assert r.returncode == -signal.SIGKILL, (fault, r.stdout[-2000:], r.stderr[-3000:])
    r = _run(killed)
    assert r.returncode == 0, r.stderr[-3000:]
    for sub in ("bc", ""):
        assert_trees_equal(_params(full / sub), _params(killed / sub))
        ma, mb = _metrics(full / sub / "metrics.jsonl"), _metrics(killed / sub / "metrics.jsonl")
        assert mb == ma  # no duplicate rows for the steps re-run after the BC resume
    la = (full / "eval" / "eval_logs.jsonl").read_text()
    assert (killed / "eval" / "eval_logs.jsonl").read_text() == la
    sa = json.loads((full / "eval" / "summary.json").read_text())
    sb = json.loads((killed / "eval" / "summary.json").read_text())
    assert sb["systems"] == sa["systems"]
    # every launch of each stage is recorded in its config history
    assert len(list((killed / "bc" / "config_history").glob("*.json"))) >= 2
