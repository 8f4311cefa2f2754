"""launch/slurm.sbatch and launch/tpu_pod.sh run end to end under stand-ins for srun/scontrol/gcloud
(small scripts on PATH that execute the command on this machine): a tiny BC run must happen, with
the launcher's overrides applied AFTER the user's --config=FILE (ml_collections rejects them before)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--config=configs/bc.py", "--config.train.steps=2", "--config.train.save_every=2",
        "--config.train.eval_every=0", "--config.data.demo_postings=24",
        "--config.data.max_len=64", "--config.data.buckets=(64,)", "--config.optim.batch_size=4",
        "--config.train.progress=False", "--config.train.tensorboard=False",
        "--config.distributed.initialization_timeout_s=60"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _stand_ins(tmp_path: Path) -> tuple[Path, Path]:
    """bin/ with srun, scontrol, gcloud and python stand-ins; every call is logged to calls.log."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    scripts = {
        # one node: SLURM's task 0 runs the command here
        "srun": 'echo "srun $*" >> "$CALLS"\nwhile [[ "${1:-}" == -* ]]; do shift; done\n'
                'export SLURM_PROCID=0\nexec "$@"\n',
        "scontrol": 'echo "scontrol $*" >> "$CALLS"\n'
                    '[ "$1 $2" = "show hostnames" ] && echo localhost\n',
        # one TPU worker: run --command= here; the pod's cluster detection is emulated through
        # fairjax's own env vars (a 1-process jax.distributed run over gloo)
        "gcloud": 'echo "gcloud $*" >> "$CALLS"\ncmd=""\nfor a in "$@"; do\n'
                  '  case "$a" in --command=*) cmd="${a#--command=}" ;; esac\ndone\n'
                  'export FAIRJAX_COORDINATOR="localhost:$FAIRJAX_PORT" FAIRJAX_NUM_PROCESSES=1 '
                  'FAIRJAX_PROCESS_ID=0\nexec bash -c "$cmd"\n',
        "python": f'exec "{sys.executable}" "$@"\n',
        "python3": f'exec "{sys.executable}" "$@"\n',
    }
    for name, body in scripts.items():
        p = bin_dir / name
        p.write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + body)
        p.chmod(0o755)
    return bin_dir, log


def _env(tmp_path, bin_dir, log, **extra):
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", CALLS=str(log),
               JAX_PLATFORMS="cpu", FAIRJAX_PORT=str(_free_port()), PYTHONPATH=str(REPO), **extra)
    for k in ("FAIRJAX_COORDINATOR", "FAIRJAX_NUM_PROCESSES", "FAIRJAX_PROCESS_ID"):
        env.pop(k, None)
    return env


def _assert_ran(run_dir: Path, dtype: str):
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["model"]["dtype"] == dtype and cfg["train"]["steps"] == 2
    steps = [json.loads(l)["step"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 2
    assert (run_dir / "checkpoints" / "2").is_dir()
    return cfg


@pytest.mark.slow
def test_slurm_sbatch_runs_under_stand_ins(tmp_path):
    bin_dir, log = _stand_ins(tmp_path)
    run_dir = tmp_path / "run"
    env = _env(tmp_path, bin_dir, log, SLURM_JOB_NODELIST="node[1]", SLURM_NNODES="1",
               SLURM_SUBMIT_DIR=str(REPO))
    proc = subprocess.run(["bash", "launch/slurm.sbatch", *TINY, f"--config.run_dir={run_dir}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    calls = log.read_text()
    assert "scontrol show hostnames node[1]" in calls and "srun --kill-on-bad-exit=1" in calls
    _assert_ran(run_dir, "bfloat16")  # the launcher's default, applied after --config=


@pytest.mark.slow
def test_tpu_pod_runs_under_stand_ins(tmp_path):
    bin_dir, log = _stand_ins(tmp_path)
    run_dir = tmp_path / "run"
    env = _env(tmp_path, bin_dir, log, FAIRJAX_REMOTE_DIR=str(REPO))
    # the caller's own dtype wins over the launcher's bf16 default
    proc = subprocess.run(["bash", "launch/tpu_pod.sh", "my-tpu", "us-central2-b", "--project=p",
                           "--", *TINY, f"--config.run_dir={run_dir}",
                           "--config.model.dtype=float32"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    call = log.read_text()
    assert call.startswith("gcloud compute tpus tpu-vm ssh my-tpu --zone=us-central2-b --project=p "
                           "--worker=all --command=")
    cfg = _assert_ran(run_dir, "float32")
    assert cfg["distributed"]["auto"] is True
