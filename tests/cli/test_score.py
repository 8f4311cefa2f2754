"""The scoring CLI (`python -m fairjax.score`) and the reward benchmark on tiny inputs."""
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(*args):
    if not any(a.startswith("--embedder") for a in args):
        args = (*args, "--embedder=tfidf")  # the hashing TF-IDF: no model to load
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "fairjax.score", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture()
def small_data(tmp_path):
    pool = _jsonl(tmp_path / "pool.jsonl", [
        {"id": f"c{i}", "text": t, "gender": g} for i, (t, g) in enumerate([
            ("python backend engineer postgres", "M"), ("python data engineer spark", "F"),
            ("nurse at a city hospital", "F"), ("accountant with cpa", "M"),
            ("frontend engineer react typescript", "F"), ("backend engineer go kubernetes", "M")])])
    texts = _jsonl(tmp_path / "texts.jsonl", [
        {"id": "j1", "text": "Acme | Backend Engineer | Berlin\nWe are an aggressive, competitive team. "
                             "Python and Postgres. Contact: Jane Doe jane@acme.com"},
        {"id": "j2", "text": "Hospital seeks a warm, supportive nurse."}])
    return tmp_path, pool, texts


def test_score_cli(small_data):
    tmp, pool, texts = small_data
    out, summ = tmp / "scores.jsonl", tmp / "summary.json"
    res = _run(f"--texts={texts}", f"--pool={pool}", "--k=4", "--select_k=2", "--n_features=512",
               "--cache_dir=", f"--output={out}", f"--summary_json={summ}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "aggregate over 2 texts" in res.stdout and "ir_female" in res.stdout
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["j1", "j2"]
    assert rows[0]["verdict"] == "slightly masculine-coded" and rows[0]["pii_email"] == 1
    assert rows[0]["share_female"] + rows[0]["share_male"] == pytest.approx(1.0)
    summary = json.loads(summ.read_text())
    assert summary["metrics"]["reward"]["n"] == 2 and summary["attributes"] == ["gender"]


def test_score_cli_bad_inputs(small_data):
    tmp, pool, texts = small_data
    bad = tmp / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n')
    res = _run(f"--texts={bad}", f"--pool={pool}", "--cache_dir=")
    assert res.returncode != 0 and "bad.jsonl:2" in res.stderr
    badpool = tmp / "badpool.jsonl"
    badpool.write_text('{"text": "a", "gender": "F"}\n{"text": "b", "gender": "?"}\n')
    res = _run(f"--texts={texts}", f"--pool={badpool}", "--cache_dir=")
    assert res.returncode != 0 and "badpool.jsonl:2: gender '?'" in res.stderr
    res = _run(f"--texts={texts}")
    assert res.returncode != 0 and "--pool" in res.stderr


def test_reward_benchmark_runs(tmp_path):
    from fairjax.benchmarks import reward
    out = reward.run(types.SimpleNamespace(batch=300, json=str(tmp_path / "b.json")))
    assert out["n_texts"] == 300 and set(out["seconds"]) >= {"text_embed", "total"}
    assert json.loads((tmp_path / "b.json").read_text())["n_candidates"] == 300
