"""launch/gpu_bench.sh + fairjax/benchmarks/gpu_bench.py: the CPU dry run (tiny shapes) produces
the JSON figures; a failing or out-of-budget part is reported as an error while the rest still
print."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fairjax.benchmarks import gpu_bench

ROOT = Path(__file__).resolve().parents[2]


def test_out_of_budget_parts_are_reported_and_json_is_written(tmp_path):
    out = gpu_bench.main(["--dry-run", "--budget", "1", "--out", str(tmp_path / "g.json")])
    assert set(out["parts"]) == set(gpu_bench.PARTS)
    assert all("skipped" in p["error"] for p in out["parts"].values())
    assert json.loads((tmp_path / "g.json").read_text())["parts"].keys() == out["parts"].keys()


def test_a_failing_part_returns_an_error_not_an_exception():
    res = gpu_bench._child("no_such_part", True, 60)
    assert res["error"].startswith("exit") and res["tail"]


@pytest.mark.slow
def test_dry_run_script_prints_figures(tmp_path):
    p = subprocess.run(["bash", "launch/gpu_bench.sh", "--dry-run", "--only", "ilql_lora_llama_7b",
                        "--out", str(tmp_path / "g.json")], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin",
                                                    "HOME": str(Path.home())})
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((tmp_path / "g.json").read_text())["parts"]["ilql_lora_llama_7b"]
    assert "error" not in res, res
    assert res["tokens_per_s"] > 0 and res["flops"] > 0 and res["settings"]["lora"] == "none"
