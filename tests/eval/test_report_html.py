"""fairjax.eval.report_html: the self-contained HTML evaluation report (the browser test opens it)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from fairjax.eval import report as RP
from fairjax.eval.report_html import (
    diff_html,
    highlight,
    render_html,
    write_report_html,
)

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


def test_highlight_and_diff_escape_and_mark():
    h = highlight("<b>competitive</b> & kind")
    assert h == ('&lt;b&gt;<mark class="coded masculine" title="masculine-coded">competitive</mark>'
                 '&lt;/b&gt; &amp; <mark class="coded feminine" title="feminine-coded">kind</mark>')
    d = diff_html("a competitive leader", "a collaborative leader")
    assert "<del><mark class=\"coded masculine\"" in d and "<ins>collaborative</ins>" in d
    assert re.sub(r"<[^>]+>", "", d) == "a competitivecollaborative " + "leader"


def test_write_report_html_is_self_contained(tmp_path):
    out = make_eval_dir(tmp_path)
    path = write_report_html(out)
    assert path == str(out / "report" / "report.html")
    page = Path(path).read_text()
    # headline table from render_headline, escaped pool name, verdict sentence
    assert '<table class="headline">' in page and "<code>ilql</code>" in page
    assert "400 candidates from &lt;demo&gt;" in page and "Verdict:" in page
    # figures embedded, the Pareto one first; nothing referenced from outside the file
    srcs = re.findall(r'<img class="figure" alt="([^"]+)" src="([^"]+)"', page)
    assert [a for a, _ in srcs][0] == "pareto_fairness_vs_preservation" and len(srcs) == 4
    assert all(s.startswith("data:image/png;base64,") for _, s in srcs)
    assert not re.search(r'(?:src|href)="(?!data:)', page) and "<script" not in page
    # examples side by side, user text escaped, diffs and coded words marked
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "job-&lt;1&gt;" in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "<del><mark class=\"coded masculine\" title=\"masculine-coded\">competitive</mark></del>" in page
    assert "<ins>collaborative</ins>" in page
    assert page.count('<div class="example"') == 3


def test_render_html_without_examples_or_figures():
    page = render_html(SUMMARY, [])
    assert "Examples" not in page and "<h2>Figures</h2>" not in page and "Headline" in page


def test_bad_log_line_names_the_line(tmp_path):
    out = make_eval_dir(tmp_path)
    with open(out / "eval_logs.jsonl", "a") as f:
        f.write("{oops\n")
    with pytest.raises(ValueError, match=r"eval_logs.jsonl:4: not valid JSON"):
        write_report_html(out, n_examples=10)
