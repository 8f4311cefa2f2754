"""kill -9 of `python -m fairjax.train` (during an async checkpoint save), resume, finish:
final params equal an uninterrupted run."""
import os
import signal
import subprocess
import sys

import pytest

from fairjax.runs import restore_policy as restore_policy_params

from trainer_fixtures import REPO, assert_trees_equal

ARGS = ["--config=configs/bc.py", "--config.train.steps=8", "--config.train.save_every=2",
        "--config.train.eval_every=0", "--config.data.demo_postings=40",
        "--config.data.max_len=64", "--config.data.buckets=(32,64)", "--config.train.progress=False",
        "--config.train.tensorboard=False"]


def _train(run_dir, fault=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("FAIRJAX_FAULT", None)
    if fault:
        env["FAIRJAX_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "fairjax.train", f"--run_dir={run_dir}", *ARGS],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_kill9_then_resume_matches_uninterrupted_run(tmp_path):
    full = _train(tmp_path / "full")
    assert full.returncode == 0, full.stderr[-2000:]
    killed = _train(tmp_path / "killed", fault="5")  # SIGKILL right after step 5
    assert killed.returncode == -signal.SIGKILL
    done = sorted(int(p.name) for p in (tmp_path / "killed" / "checkpoints").iterdir()
                  if p.name.isdigit())
    assert done and max(done) <= 4
    resumed = _train(tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed" in resumed.stdout
    _, a = restore_policy_params(tmp_path / "full", "latest")
    _, b = restore_policy_params(tmp_path / "killed", "latest")
    assert_trees_equal(a, b, rtol=0, atol=1e-6)
