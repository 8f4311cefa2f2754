"""Rewrite job postings: `python -m fairjax.rewrite --input=FILE --output=OUT.jsonl [--model=...]`.

The shipped rewriter is `SHIPPED` (the one place that names it). Until a trained policy beats
the baselines on the evaluation's joint metrics, it is the `inclusion_statement` baseline (the
lexicon swap towards neutral wording plus one fixed inclusion/benefits sentence,
`fairjax.rewriters.INCLUSION_STATEMENT`); the choice follows the evaluation (docs/evaluation.md).

`--model=` (and `load_rewriter(model=...)`):
* a baseline: `lexicon_swap`, `inclusion_statement`;
* `prompted` or `prompted:SOURCE`: an instruct model zero-shot (`fairjax.systems.PromptedRewriter`,
  default SOURCE `fairjax.systems.PROMPTED_MODEL`); a preset name (`fairjax.io.presets`) is used the same way;
* anything else `fairjax.runs.load` reads (a fairjax run dir, a fairjax model dir, a Hugging
  Face dir): the policy sampled on the job-rewrite prompt (`fairjax.systems.PolicyRewriter`).

Input (`--input`):
* `.jsonl`: one object per line with a string `text` (optional `id`, kept in the output);
* any other file (e.g. `.txt`): one posting per file, or several separated by a line that is
  exactly `---`;
* `-`: standard input, read as JSONL when its first non-blank character is `{`, else as text.
Bad input stops the run before anything is rewritten with one line naming the file and line: an
empty posting, a file that is not text (a NUL byte or invalid UTF-8), a JSONL line that is not an
object with a string `text`.

Output (`--output`, JSONL, one record per posting, in input order): `index`, `id` (when the input
has one), `text`, `rewrite`, `model`, `sim` (cosine of the rewrite to the posting under the
hashing TF-IDF embedder, the diversity scorer's), `header_kept`, and `before` / `after`:
masculine- and feminine-coded word counts and the Gender Decoder verdict, plus the diversity
reward when `--pool` names candidate pools. Each record is appended and flushed as it is done. A
rerun with the same input and model continues after the records already there (a line cut by a
crash is dropped); an output that holds other postings or another model's rewrites is refused
(give a new --output or delete it). A short table goes to stdout.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from fairjax.data.jobs import DataError
from fairjax.eval.preservation import cosine_rows, header_kept
from fairjax.evaluate import read_log
from fairjax.rewards.diversity import DiversityScorer
from fairjax.rewards.embedders import HashingTfidfEmbedder
from fairjax.rewards.lexicon import code_text
from fairjax.rewards.pool import CandidatePool, load_pool
from fairjax.rewriters import TextRewriter as Rewriter  # noqa: F401  (the type load_rewriter returns)
from fairjax.systems import load_rewriter as load

# The rewriter fairjax ships; see the module docstring for why it is a baseline for now.
SHIPPED = "inclusion_statement"
SEPARATOR = "---"


# ----------------------------------------------------------------------------- rewriters
def load_rewriter(model: str = SHIPPED, **kw) -> Rewriter:
    """A rewriter with `.name` and `.rewrite(texts) -> list[str]` (see the module docstring;
    keywords: temperature, batch_size, seed)."""
    return load(model, **kw)


# ----------------------------------------------------------------------------- input
@dataclasses.dataclass(frozen=True)
class Posting:
    text: str
    where: str  # "file:line" of its first line
    id: Optional[str] = None


def _decode(data: bytes, name: str) -> str:
    if b"\0" in data:
        line = data[:data.index(b"\0")].count(b"\n") + 1
        raise DataError(f"{name}:{line}: not a text file (NUL byte); give .jsonl or plain text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{name}:{line}: not a text file (invalid UTF-8 at byte {e.start}); give "
                        ".jsonl or plain text") from None


def _jsonl_posting(line: str, where: str) -> Posting:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON ({e.msg})") from None
    text = rec.get("text") if isinstance(rec, dict) else None
    if not isinstance(text, str):
        raise DataError(f"{where}: no 'text' field: each line needs an object with a string "
                        "'text' (and optionally 'id')")
    if not text.strip():
        raise DataError(f"{where}: empty posting")
    rid = rec.get("id")
    return Posting(text.strip(), where, None if rid is None else str(rid))


def parse_jsonl(text: str, name: str) -> list[Posting]:
    return [_jsonl_posting(line, f"{name}:{n}") for n, line in enumerate(text.splitlines(), 1)
            if line.strip()]


def parse_text(text: str, name: str) -> list[Posting]:
    out, chunk, start = [], [], 1
    lines = text.splitlines()
    for n, line in enumerate(lines + [SEPARATOR], 1):
        if line.strip() == SEPARATOR:
            body = "\n".join(chunk).strip()
            if not body:
                raise DataError(f"{name}:{start}: empty posting (postings are separated by a line "
                                f"'{SEPARATOR}')")
            out.append(Posting(body, f"{name}:{start}"))
            chunk, start = [], n + 1
        else:
            chunk.append(line)
    return out


def read_postings(path: str, stdin=None) -> list[Posting]:
    """The postings of `path` ("-" = stdin); see the module docstring for formats and errors."""
    if path == "-":
        name = "<stdin>"
        src = stdin if stdin is not None else sys.stdin.buffer
        data = src.read()
        text = _decode(data if isinstance(data, bytes) else data.encode("utf-8"), name)
        is_jsonl = text.lstrip().startswith("{")
    else:
        name = path
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such file")
        with open(path, "rb") as f:
            text = _decode(f.read(), name)
        is_jsonl = path.lower().endswith((".jsonl", ".json"))
    if not text.strip():
        raise DataError(f"{name}:1: empty posting (the input is empty)")
    return parse_jsonl(text, name) if is_jsonl else parse_text(text, name)


# ----------------------------------------------------------------------------- scores
def coded(text: str) -> dict:
    c = code_text(text)
    return {"masculine": c.masculine, "feminine": c.feminine, "verdict": c.verdict}


def score_records(postings: Sequence[Posting], rewrites: Sequence[str], scorer, embedder,
                  model: str, start: int) -> list[dict]:
    texts = [p.text for p in postings]
    sims = cosine_rows(embedder.embed(list(rewrites)), embedder.embed(texts))
    div = ((scorer.score_texts(texts), scorer.score_texts(list(rewrites))) if scorer is not None
           else None)
    out = []
    for j, (p, r) in enumerate(zip(postings, rewrites)):
        rec: dict[str, Any] = {"index": start + j}
        if p.id is not None:
            rec["id"] = p.id
        rec.update(text=p.text, rewrite=r, model=model,
                   sim=None if sims[j] != sims[j] else float(sims[j]),
                   header_kept=_nan_none(header_kept(p.text, r)),
                   before=coded(p.text), after=coded(r))
        if div is not None:
            rec["before"]["reward"], rec["after"]["reward"] = float(div[0][j]), float(div[1][j])
        out.append(rec)
    return out


def _nan_none(x: float) -> Optional[float]:
    return None if x != x else float(x)


def build_scorer(pools: Optional[Sequence[str]]):
    """(diversity scorer over `pools` or None, embedder for SIM)."""
    emb = HashingTfidfEmbedder(n_features=4096)
    if not pools:
        return None, emb
    return DiversityScorer(CandidatePool.concat([load_pool(p) for p in pools]), emb), emb


# ----------------------------------------------------------------------------- output
def resume_point(out: Path, postings: Sequence[Posting], model: str) -> int:
    """How many records `out` already holds for these postings and this model (0: none);
    refuses an output written for other postings or another model."""
    done = read_log(out)  # drops (and truncates) a line cut by a crash
    if len(done) > len(postings):
        raise DataError(f"{out}: holds {len(done)} records, the input has {len(postings)} "
                        "postings: give a new --output or delete it")
    for i, rec in enumerate(done):
        p = postings[i]
        if rec.get("text") != p.text or rec.get("id") != p.id or rec.get("model") != model:
            raise DataError(f"{out}:{i + 1}: holds a rewrite of another posting or model "
                            f"({rec.get('model')!r}), not of {p.where} with {model!r}: give a new "
                            "--output or delete it")
    return len(done)


def run(input_path: str, output: str, model: str = SHIPPED, pools: Optional[Sequence[str]] = None,
        rewriter: Optional[Rewriter] = None, batch_size: int = 8, stdin=None, **kw) -> list[dict]:
    """Rewrite every posting of `input_path` into `output` (module docstring); returns the
    records of this call."""
    postings = read_postings(input_path, stdin=stdin)
    out = Path(output)
    if out.exists() and out.is_dir():
        raise DataError(f"{out}: is a directory; --output names a JSONL file")
    if input_path != "-" and out.exists() and out.resolve() == Path(input_path).resolve():
        raise DataError(f"{out}: refusing to write over the input")
    rewriter = rewriter or load_rewriter(model, batch_size=batch_size, **kw)
    start = resume_point(out, postings, rewriter.name)
    scorer, emb = build_scorer(pools)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for s in range(start, len(postings), batch_size):
        chunk = postings[s:s + batch_size]
        recs = score_records(chunk, rewriter.rewrite([p.text for p in chunk]), scorer, emb,
                             rewriter.name, s)
        with open(out, "a", encoding="utf-8") as f:
            for r in recs:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
                f.flush()
            os.fsync(f.fileno())
        written += recs
    return written


def format_table(records: Sequence[dict]) -> str:
    has_reward = any("reward" in r["before"] for r in records)
    head = f"{'#':>4s} {'id':14s} {'masc.':>7s} {'fem.':>7s} {'SIM':>5s} {'header':>6s}  verdict after"
    lines = [head + ("  Δreward" if has_reward else "")]
    for r in records:
        b, a = r["before"], r["after"]
        sim = "  nan" if r["sim"] is None else f"{r['sim']:.2f}"
        hk = "   -" if r["header_kept"] is None else f"{r['header_kept']:.2f}"
        line = (f"{r['index']:4d} {str(r.get('id', ''))[:14]:14s} {b['masculine']:>3d}→{a['masculine']:<3d}"
                f" {b['feminine']:>3d}→{a['feminine']:<3d} {sim:>5s} {hk:>6s}  {a['verdict']}")
        if has_reward:
            line += f"  {a['reward'] - b['reward']:+.3f}"
        lines.append(line)
    return "\n".join(lines)
