"""python -m fairjax.rate (fairjax/cli/rate.py) and the audit behind it (fairjax/audit.py): effects
from RATE files, end-to-end run with the scorer registry."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fairjax import audit
from fairjax.eval import rate as R

REPO = Path(__file__).resolve().parents[2]
POSTINGS = [
    "We need an aggressive, competitive rockstar to lead our analytics team.",
    "Friendly team building tools for gardeners; supportive and understanding colleagues.",
    "Ambitious leaders wanted: challenging decisions, dominant market position.",
    "Nurse practitioner for a caring clinic with committed, warm staff.",
    "Accountant to analyze budgets independently and lead audits.",
    "Teacher for children; patient, kind and together with families.",
]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "fairjax.rate", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_run_rate_with_registry_scorers(tmp_path):
    pool = _write_jsonl(tmp_path / "pool.jsonl", [
        {"id": f"c{i}", "text": t, "gender": g} for i, (t, g) in enumerate([
            ("Experienced accountant, audits and budgets.", "female"),
            ("Accountant who leads audit teams.", "male"),
            ("Registered nurse in a clinic.", "female"),
            ("Nurse and caring practitioner.", "male"),
            ("Software engineer, analytics and data.", "male"),
            ("Teacher for primary school children.", "female")])])
    scorer = audit.build_scorer("diversity", audit.ScorerOptions(pool=[pool], embedder="tfidf"))
    out = audit.run_rate(POSTINGS, scorer, tmp_path / "div", n_boot=50)
    recs = R.read_scored_jsonl(out["scored"])
    assert len(recs) == len(POSTINGS) and recs[0]["id"] == "0"
    assert set(recs[0]["completions"]) == set(R.COMPLETION_KEYS)
    # the written file reproduces the effects the run reported
    again = R.effects_from_records(recs, scorer.name, n_boot=50)
    e = json.load(open(out["effects_json"]))
    for k in R.ESTIMATORS:
        assert again[k] == pytest.approx(e[k])
    assert e["flip_rate_rewrite"] == 1.0 and e["Y1_count"] == 3
    assert open(out["plot"], "rb").read(4) == b"\x89PNG"

    # extension point: a custom scorer (e.g. a value head) registered by name
    class Length:
        name = "length"

        def score_texts(self, texts):
            return np.array([len(t) for t in texts], float)

    audit.SCORERS["length_test"] = lambda o: Length()
    try:
        e2 = audit.run_rate(POSTINGS, audit.build_scorer("length_test", audit.ScorerOptions()),
                          tmp_path / "len", n_boot=0)["effects"]
    finally:
        del audit.SCORERS["length_test"]
    assert e2["reward_key"] == "length" and np.isfinite(e2["ATE_rewritten_rewrite"])
    with pytest.raises(ValueError, match="unknown scorer"):
        audit.build_scorer("nope", audit.ScorerOptions())
    with pytest.raises(ValueError, match="needs at least one --pool"):
        audit.build_scorer("diversity", audit.ScorerOptions())


def test_cli_effects_and_run(tmp_path):
    sc, _ = R.simulate(n=80, seed=2)
    rm = "sfairXC/FsfairX-LLaMA3-RM-v0.1"
    scored = _write_jsonl(tmp_path / "s.jsonl", [
        {"w_original": bool(w), "completions": {k: "t" for k in R.COMPLETION_KEYS},
         "reward_question": "q", rm: {"original": o, "rewrite": s, "rewritten rewrite": d}}
        for w, o, s, d in zip(sc.w.tolist(), sc.original.tolist(), sc.rewrite.tolist(),
                              sc.rewritten_rewrite.tolist())])
    res = _cli("effects", f"--scored={scored}", f"--output={tmp_path / 'e.json'}", "--n_boot=100",
               f"--plot={tmp_path / 'e.png'}")
    assert res.returncode == 0, res.stderr[-2000:]
    e = json.load(open(tmp_path / "e.json"))
    ref = R.effects_from_scores(sc, n_boot=100)
    assert e["reward_key"] == rm and e["ATE_rewritten_rewrite"] == pytest.approx(ref["ATE_rewritten_rewrite"])
    assert "RATE ATE" in res.stdout and (tmp_path / "e.png").is_file()

    corpus = _write_jsonl(tmp_path / "c.jsonl", [{"id": f"p{i}", "text": t} for i, t in enumerate(POSTINGS)])
    res = _cli("run", f"--corpus={corpus}", "--scorer=gender_coded", f"--output_dir={tmp_path / 'o'}",
               "--n_boot=50")
    assert res.returncode == 0, res.stderr[-2000:]
    e = json.load(open(tmp_path / "o" / "effects.json"))
    assert e["ATE_rewritten_rewrite"] > 0.5  # masculine wording raises the masculine-coded ratio
    assert R.read_scored_jsonl(tmp_path / "o" / "scored.jsonl")[1]["id"] == "p1"

    bad = _cli("effects", f"--scored={corpus}")
    assert bad.returncode != 0 and "c.jsonl:1: no reward block" in bad.stderr
    bad = _cli("effects", f"--scored={corpus}", "--reward_key=x")
    assert bad.returncode != 0 and "c.jsonl:1: missing 'w_original'" in bad.stderr
    assert _cli("frobnicate").returncode != 0
