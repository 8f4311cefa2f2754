"""An evaluate output directory (summary.json, eval_logs.jsonl, report/ with real PNG figures)
for the HTML report tests and the browser test."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from fairjax.eval import report as RP

ROWS = [
    {"index": 0, "id": "job-0", "prompt": "p0",
     "original": {"text": "We want a competitive leader. Be supportive.", "reward": -20.0},
     "ilql": {"text": "We want a collaborative mentor. Be supportive.", "reward": -5.0}},
    {"index": 1, "id": "job-<1>", "prompt": "p1",
     "original": {"text": "<script>alert(1)</script> ambitious & decisive", "reward": -30.0},
     "ilql": {"text": "<script>alert(1)</script> eager & clear-minded <img src=x onerror=alert(2)>",
              "reward": -10.0}},
    {"index": 2, "id": "job-2", "prompt": "p2",
     "original": {"text": "Plain posting.", "reward": -1.0},
     "ilql": {"text": "Plain posting.", "reward": -1.0}},
]


def _ci(mean, lo, hi, n=3):
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "n": n}


SUMMARY = {
    "checkpoint": "runs/x", "n_prompts": 3, "systems": {
        "original": {"reward": _ci(-17.0, -30.0, -1.0),
                     "fairness": {"gender": {"ratio": {"value": 0.61, "ci_low": 0.4, "ci_high": 0.8},
                                             "by_group": {}, "overall": {}, "difference": {}}}},
        "ilql": {"reward": _ci(-5.3, -10.0, -1.0),
                 "vs_original": {"reward": {"mean_diff": 11.7, "ci_low": 0.0, "ci_high": 19.0}},
                 "fairness": {"gender": {"ratio": {"value": 0.83, "ci_low": 0.6, "ci_high": 0.95},
                                         "by_group": {}, "overall": {}, "difference": {}}},
                 "preservation": {"chrf": _ci(71.0, 60.0, 80.0)},
                 "finished_share": _ci(1.0, 1.0, 1.0)}},
    "trained_reward": {"scorer": "diversity"},
    "trained_reward_by_system": {"ilql": {"scorer": "diversity"}},
    "reported_reward": {"scorer": "diversity", "pool": "400 candidates from <demo>"},
    "four_fifths_note": "The four-fifths rule is a US guideline.",
}


def make_eval_dir(root: Path) -> Path:
    """An evaluate output dir: summary.json, eval_logs.jsonl, report/ with real PNG figures."""
    out = Path(root) / "eval"
    rep = out / "report"
    systems = {n: [{"reward": r[n]["reward"], "ir_female": 0.8, "ir_male": 1.0,
                    "gender_verdict": "neutral"} for r in ROWS] for n in ("original", "ilql")}
    paths = RP.write_report(rep, systems, {}, n_boot=50)
    shutil.copy(paths["impact_ratios"], rep / "pareto_fairness_vs_preservation.png")
    (out / "summary.json").write_text(json.dumps({**SUMMARY, "report": paths}))
    (out / "eval_logs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return out
