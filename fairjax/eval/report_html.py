"""The evaluation report as one self-contained HTML page: `report/report.html` beside report.md.

Built from what `fairjax.evaluate` wrote: `summary.json` (the headline), `eval_logs.jsonl` (the
postings and every system's rewrite) and the figures in `report/` (PNG, embedded as data URIs,
the Pareto figure first when there is one). Inline CSS, no script, nothing from the network.
The headline section is `report.render_headline` (the same tables as report.md) turned into HTML;
then example rewrites side by side with their originals: gender-coded words highlighted
(`fairjax.rewards.lexicon`) and the word diff against the original marked with <del>/<ins>.
Every text is HTML-escaped. Standard library + numpy only (no jax).
"""
from __future__ import annotations

import base64
import html
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from fairjax.eval.diff import word_diff
from fairjax.eval.report import render_headline
from fairjax.rewards.lexicon import LEXICON_NAME, coded_spans

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1200px;
padding:1rem 1.5rem;color:#1d1f23}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem}h3{font-size:1.05rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #dde1e6;padding:.25rem .55rem;text-align:left;vertical-align:top}
th{background:#f0f2f5}
img.figure{max-width:100%;border:1px solid #dde1e6;margin:.5rem 0}
.example{display:grid;gap:.6rem;margin:1rem 0 2rem}
.example .text{white-space:pre-wrap;border:1px solid #e3e6ea;background:#fbfbfc;padding:.5rem;
border-radius:4px;font:13px/1.45 ui-monospace,"DejaVu Sans Mono",monospace;overflow-wrap:anywhere}
mark.coded{border-bottom:2px solid;padding:0 1px}
mark.masculine{background:#cfe2ff;border-color:#3d6fb6}mark.feminine{background:#ffe0b8;border-color:#b46a00}
ins{background:#d4f4d7;text-decoration:none;border-bottom:2px solid #2f8a3a}del{background:#fbd3d3;color:#7a1f1f}
.legend{font-size:.85rem}
"""
FIGURE_ORDER = ("pareto",)  # figure names containing these come first


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _inline(md: str) -> str:
    """Escape one markdown line, then render the inline marks render_headline uses."""
    out = _e(md)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"(?<![\w/])_([^_]+)_(?![\w/])", r"<em>\1</em>", out)


def _cells(line: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def markdown_lines_to_html(lines: Sequence[str]) -> str:
    """render_headline's lines (paragraphs, ### headings, pipe tables) -> HTML; text escaped."""
    out: list[str] = []
    i, n_tables = 0, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            rows = [_cells(b) for b in block if not re.fullmatch(r"\|(?:\s*:?-+:?\s*\|)+", b.strip())]
            out.append('<table class="headline">' if n_tables == 0 else "<table>")
            n_tables += 1
            for j, r in enumerate(rows):
                tag = "th" if j == 0 else "td"
                out.append("<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in r) + "</tr>")
            out.append("</table>")
            continue
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 4)
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(out)


def highlight(text: str) -> str:
    """Escaped text with gender-coded words wrapped in <mark class="coded masculine|feminine">."""
    parts, pos = [], 0
    for s, e, _, kind in coded_spans(text):
        parts.append(_e(text[pos:s]))
        parts.append(f'<mark class="coded {kind}" title="{kind}-coded">{_e(text[s:e])}</mark>')
        pos = e
    parts.append(_e(text[pos:]))
    return "".join(parts)


def diff_html(before: str, after: str) -> str:
    """The word diff of `after` against `before`, coded words highlighted inside each part."""
    tags = {"insert": "ins", "delete": "del"}
    out = []
    for p in word_diff(before, after):
        body = highlight(p["text"])
        out.append(f"<{tags[p['op']]}>{body}</{tags[p['op']]}>" if p["op"] in tags else body)
    return "".join(out)


def _figures(report_dir: Path) -> list[tuple[str, str]]:
    pngs = sorted(report_dir.glob("*.png"),
                  key=lambda p: (not any(k in p.stem.lower() for k in FIGURE_ORDER), p.name))
    return [(p.stem, "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii"))
            for p in pngs]


def read_rows(path: Path, limit: Optional[int] = None) -> list[dict]:
    """The first `limit` rows of an eval_logs.jsonl; ValueError names file:line of a bad one."""
    rows: list[dict] = []
    with open(path, encoding="utf-8") as f:
        numbered = ((n, ln) for n, ln in enumerate(f, 1) if ln.strip())
        while limit is None or len(rows) < limit:
            n, line = next(numbered, (0, None))
            if line is None:
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    return rows


def render_html(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                figures: Sequence[tuple[str, str]] = (),
                title: str = "fairjax evaluation: original postings vs rewrites") -> str:
    systems = [s for s in summary.get("systems", {}) if s != "original"]
    body = [f"<h1>{_e(title)}</h1>", "<h2>Headline</h2>", markdown_lines_to_html(render_headline(summary))]
    if figures:
        body.append("<h2>Figures</h2>")
        body += [f'<figure><img class="figure" alt="{_e(n)}" src="{src}"><figcaption>{_e(n)}'
                 "</figcaption></figure>" for n, src in figures]
    if rows:
        body += [f"<h2>Examples (first {len(rows)} eval postings)</h2>",
                 f'<p class="legend">Coded words ({_e(LEXICON_NAME)}): <mark class="coded masculine">'
                 'masculine</mark> <mark class="coded feminine">feminine</mark>; changes against the '
                 "original: <del>deleted</del> <ins>inserted</ins>.</p>"]
        cols = 1 + len(systems)
        for r in rows:
            orig = str((r.get("original") or {}).get("text", ""))
            body.append(f'<h3>{_e(r.get("id", r.get("index", "")))}</h3>')
            body.append(f'<div class="example" style="grid-template-columns:repeat({cols},1fr)">')
            body.append(f'<div><strong>original</strong><div class="text">{highlight(orig)}</div></div>')
            for s in systems:
                got = r.get(s)
                text = str(got.get("text", "")) if isinstance(got, Mapping) else ""
                body.append(f"<div><strong>{_e(s)}</strong>"
                            f'<div class="text">{diff_html(orig, text)}</div></div>')
            body.append("</div>")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "img-src data:; style-src 'unsafe-inline'\">"
            f"<link rel=\"icon\" href=\"data:,\"><title>{_e(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_report_html(eval_dir: str | os.PathLike, n_examples: int = 5,
                      summary_file: str = "summary.json", log_file: str = "eval_logs.jsonl",
                      report_dir: str = "report") -> str:
    """Read EVAL_DIR/{summary.json, eval_logs.jsonl, report/*.png}, write report/report.html."""
    eval_dir = Path(eval_dir)
    with open(eval_dir / summary_file, encoding="utf-8") as f:
        summary = json.load(f)
    log = eval_dir / log_file
    rows = read_rows(log, n_examples) if log.is_file() else []
    out_dir = eval_dir / report_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_html(summary, rows, _figures(out_dir)), encoding="utf-8")
    os.replace(tmp, path)
    return str(path)
