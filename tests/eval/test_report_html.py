"""fairjax.eval.report_html: the self-contained HTML evaluation report (the browser test opens it)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from fairjax.eval.report_html import (
    diff_html,
    highlight,
    render_html,
    write_report_html,
)
from report_helpers import SUMMARY, make_eval_dir


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
