"""Multi-process runs on CPU (gloo): 2 processes x 2 devices == 1 process x 4 devices, and a
dying worker makes the others fail instead of hanging."""
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from fairjax.runs import restore_policy as restore_policy_params

from trainer_fixtures import REPO

ARGS = ["--config=configs/bc.py", "--config.train.steps=4", "--config.train.save_every=2",
        "--config.train.eval_every=0", "--config.data.demo_postings=40",
        "--config.data.max_len=64", "--config.data.buckets=(32,64)",
        "--config.train.progress=False", "--config.train.tensorboard=False",
        "--config.optim.lr=3e-4", "--config.distributed.heartbeat_timeout_s=10",
        "--config.distributed.shutdown_timeout_s=10",
        "--config.distributed.initialization_timeout_s=60",
        "--config.distributed.step_timeout_s=20"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(n, devices, run_dir, fault=None, timeout=240, grace_s=0):
    env = dict(os.environ, FAIRJAX_GRACE_S=str(grace_s), FAIRJAX_LOCAL_DEVICES=str(devices), FAIRJAX_PORT=str(_free_port()),
               FAIRJAX_CMD=f"{sys.executable} -m fairjax.train")
    env.pop("FAIRJAX_FAULT", None)
    if fault:
        env["FAIRJAX_FAULT"] = fault
    return subprocess.run(["bash", "launch/local_multihost.sh", str(n), f"--run_dir={run_dir}",
                           *ARGS], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    one = _launch(1, 4, tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _launch(2, 2, tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    _, a = restore_policy_params(tmp_path / "one", "latest")
    _, b = restore_policy_params(tmp_path / "two", "latest")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_dead_worker_makes_the_others_exit(tmp_path):
    start = time.time()
    # the launcher waits 200 s before stopping survivors itself: the survivor must exit on its
    # own (JAX's heartbeat, or fairjax's step watchdog: step_timeout_s=20)
    proc = _launch(2, 1, tmp_path / "dead", fault="2:1:exit", timeout=240, grace_s=200)
    elapsed = time.time() - start
    assert proc.returncode != 0
    assert elapsed < 120, f"survivor took {elapsed:.0f}s to exit"
