"""What the local page computes, without the web framework: scoring one posting, the word diff of
a rewrite, reading an uploaded file of postings, and the bounded rewrite queue.

`Services` holds the scorers and the rewriter, built once at start:
* gender-coded wording: `fairjax.rewards.lexicon` (Gaucher, Friesen & Kay 2011 word lists), each
  coded word with its character span in the posting;
* diversity reward, demographic shares and impact ratios of the matched candidates
  (`fairjax.rewards.diversity.DiversityScorer` over the candidate pool);
* contact data (`fairjax.rewards.pii`).
`RewriteQueue` runs the rewriter in one worker thread; requests wait in a bounded queue and are
taken in batches (the model decodes a batch at a time); a full queue refuses at once (`QueueFull`),
so a client is told to retry instead of hanging.
"""
from __future__ import annotations

import concurrent.futures
import csv
import io
import json
import math
import os
import queue
import tempfile
import threading
import time
from typing import Any, Callable, Optional

import numpy as np

from fairjax.data.demo import make_candidates
from fairjax.eval.diff import word_diff
from fairjax.rewards import embedders, lexicon, pii
from fairjax.rewards.diversity import DiversityConfig, DiversityScorer
from fairjax.rewards.pool import CandidatePool, load_pool
from fairjax.rewrite import SHIPPED, load_rewriter

MAX_BODY_BYTES = 1 << 20       # request bodies (JSON or an uploaded file) above this get 413
MAX_UPLOAD_POSTINGS = 2000
UPLOAD_SUFFIXES = (".txt", ".jsonl", ".csv")
TXT_SEPARATOR = "---"          # a .txt upload holds postings separated by lines of only '---'
DEMO_POOL_SIZE = 400


class InputError(ValueError):
    """Bad user input; `status` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class QueueFull(RuntimeError):
    """The rewrite queue is full: the caller should answer 503 with Retry-After."""


def _finite(x: Any) -> Optional[float]:
    x = float(x)
    return x if math.isfinite(x) else None


# ----------------------------------------------------------------------------- rewriter
class RewriterAdapter:
    """`rewrite(texts: list[str]) -> list[str]` and `name` of `fairjax.rewrite.load_rewriter`:
    the shipped rewriter (`fairjax.rewrite.SHIPPED`) unless `model` names another (a baseline,
    a run dir, a preset)."""

    def __init__(self, model: Optional[str] = None):
        impl = load_rewriter(model=model or SHIPPED)
        self.name = str(getattr(impl, "name", type(impl).__name__))
        self._fn: Callable[[list[str]], list[str]] = lambda texts: list(impl.rewrite(texts))

    @classmethod
    def lexicon(cls) -> "RewriterAdapter":
        """The lexicon-swap baseline (deterministic, no model: tests)."""
        return cls("lexicon_swap")

    def rewrite(self, texts: list[str]) -> list[str]:
        out = list(self._fn(list(texts)))
        if len(out) != len(texts):
            raise RuntimeError(f"rewriter {self.name} returned {len(out)} texts for {len(texts)}")
        return out


class RewriteQueue:
    """A bounded queue of rewrite requests served by one worker thread, in batches.

    `submit(text)` returns a `concurrent.futures.Future` (await it with `asyncio.wrap_future`) or
    raises `QueueFull` at once. The worker takes the first waiting request, then whatever else
    arrives within `wait_s`, up to `batch_size`, and calls `rewrite_fn` once for the batch.
    A thread-safe `queue.Queue` is used rather than an `asyncio.Queue` because the consumer is a
    thread (the model call blocks), not a coroutine. `batch_sizes` records every batch run."""

    def __init__(self, rewrite_fn: Callable[[list[str]], list[str]], maxsize: int = 32,
                 batch_size: int = 8, wait_s: float = 0.02):
        if maxsize < 1 or batch_size < 1:
            raise ValueError(f"need maxsize >= 1 and batch_size >= 1, got {maxsize}, {batch_size}")
        self.rewrite_fn, self.batch_size, self.wait_s = rewrite_fn, batch_size, wait_s
        self.maxsize = maxsize
        self._q: queue.Queue = queue.Queue(maxsize)
        self._stop = threading.Event()
        self.batch_sizes: list[int] = []
        self._thread = threading.Thread(target=self._run, name="fairjax-rewrite", daemon=True)
        self._thread.start()

    def submit(self, text: str) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        try:
            self._q.put_nowait((text, fut))
        except queue.Full:
            raise QueueFull(f"the rewrite queue is full ({self.maxsize} waiting)") from None
        return fut

    def pending(self) -> int:
        return self._q.qsize()

    def _take(self) -> list:
        try:
            first = self._q.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.batch_size:
            left = deadline - time.monotonic()
            try:
                batch.append(self._q.get(timeout=left) if left > 0 else self._q.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = [(t, f) for t, f in self._take() if f.set_running_or_notify_cancel()]
            if not batch:
                continue
            self.batch_sizes.append(len(batch))
            try:
                outs = self.rewrite_fn([t for t, _ in batch])
                if len(outs) != len(batch):
                    raise RuntimeError(f"rewriter returned {len(outs)} texts for {len(batch)}")
            except BaseException as e:
                for _, f in batch:
                    f.set_exception(e)
            else:
                for (_, f), o in zip(batch, outs):
                    f.set_result(o)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ----------------------------------------------------------------------------- pool / embedder
def demo_pool(n: int = DEMO_POOL_SIZE, seed: int = 0) -> CandidatePool:
    """The synthetic candidates of `fairjax.data.demo` (written to a temporary file and read back by
    `load_pool`, so labels are normalised exactly as for a real pool file)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "candidates.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for r in make_candidates(n, seed):
                f.write(json.dumps(r) + "\n")
        pool = load_pool(path)
    pool.sources = (f"demo candidates (fairjax.data.demo, synthetic, seed {seed})",)
    return pool


def make_embedder(name: Optional[str]):
    """The server's embedder: `tfidf` (default; the fast hashing TF-IDF) or any name
    `fairjax.rewards.embedders.make_embedder` takes (a preset such as all-minilm-l6-v2, a
    sentence-transformers directory, `bert-cls:DIR`)."""
    return embedders.make_embedder(name or "tfidf")


# ----------------------------------------------------------------------------- input checks
def check_text(obj: Any) -> str:
    """The "text" of a decoded JSON request body, or InputError naming what is wrong."""
    if not isinstance(obj, dict):
        raise InputError(f"the body must be a JSON object {{\"text\": ...}}, got {type(obj).__name__}",
                         422)
    if "text" not in obj:
        raise InputError("missing field 'text'", 422)
    text = obj["text"]
    if not isinstance(text, str):
        raise InputError(f"field 'text' must be a string, got {type(text).__name__}", 422)
    if not text.strip():
        raise InputError("field 'text' is empty", 422)
    return text


def decode_utf8(data: bytes, what: str = "the body") -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(f"{what} is not valid UTF-8 (line {line}, byte {e.start}: {e.reason})") from None


def parse_json_body(data: bytes) -> str:
    text = decode_utf8(data)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    return check_text(obj)


def _json_line(line: str, where: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None


def parse_upload(name: str, data: bytes) -> list[dict[str, Any]]:
    """Postings of an uploaded file -> [{"line", "id", "text"}]; InputError names file:line.

    .txt: one posting, or several separated by lines holding only '---'; .jsonl: one JSON object
    per line with a "text" string (an "id" is kept); .csv: a header row with a "text" column."""
    base = os.path.basename(name or "")
    suffix = os.path.splitext(base)[1].lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise InputError(f"{base or 'the upload'}: expected a .txt, .jsonl or .csv file", 415)
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise InputError(f"{base}:{line}: not a text file (NUL byte)", 415)
    text = decode_utf8(data, base)
    if text.startswith("\ufeff"):
        text = text[1:]
    out: list[dict[str, Any]] = []
    if suffix == ".txt":
        block: list[str] = []
        start = 1
        for n, line in enumerate(text.splitlines() + [TXT_SEPARATOR], 1):
            if line.strip() == TXT_SEPARATOR:
                body = "\n".join(block).strip()
                if body:
                    out.append({"line": start, "id": f"{base}:{start}", "text": body})
                block, start = [], n + 1
            else:
                block.append(line)
    elif suffix == ".jsonl":
        for n, line in [(n, ln) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]:
            obj = _json_line(line, f"{base}:{n}")
            try:
                t = check_text(obj)
            except InputError as e:
                raise InputError(f"{base}:{n}: {e}", e.status) from None
            out.append({"line": n, "id": str(obj.get("id", f"{base}:{n}")), "text": t})
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if not reader.fieldnames or "text" not in reader.fieldnames:
            raise InputError(f"{base}:1: the header has no 'text' column (columns: "
                             f"{reader.fieldnames or []})")
        try:
            for row in reader:
                n = reader.line_num
                if None in row:
                    raise InputError(f"{base}:{n}: more fields than the header has")
                t = row.get("text")
                if t is None or not t.strip():
                    raise InputError(f"{base}:{n}: empty 'text'")
                out.append({"line": n, "id": str(row.get("id") or f"{base}:{n}"), "text": t})
        except csv.Error as e:
            raise InputError(f"{base}:{reader.line_num}: bad CSV ({e})") from None
    if not out:
        raise InputError(f"{base}: no posting found")
    if len(out) > MAX_UPLOAD_POSTINGS:
        raise InputError(f"{base}: {len(out)} postings; at most {MAX_UPLOAD_POSTINGS} per upload", 413)
    return out


# ----------------------------------------------------------------------------- services
class Services:
    """The scorers and the rewriter, built once; `score(text)` and `rewrite(text)` dicts."""

    def __init__(self, pool: Optional[CandidatePool] = None, embedder: Optional[str] = None,
                 rewriter: Optional[RewriterAdapter] = None, model: Optional[str] = None,
                 config: Optional[DiversityConfig] = None):
        self.pool = pool if pool is not None else demo_pool()
        self.diversity = DiversityScorer(self.pool, make_embedder(embedder),
                                         config if config is not None else DiversityConfig())
        self.rewriter = rewriter if rewriter is not None else RewriterAdapter(model)
        self._lock = threading.Lock()  # the embedder's token memo is shared: score one at a time

    def pool_info(self) -> dict[str, Any]:
        counts = {}
        for a in ("gender", "region"):
            lab = self.pool.labels(a)
            if lab is not None:
                vals, cnt = np.unique(lab[lab != ""], return_counts=True)
                counts[a] = {str(v): int(c) for v, c in zip(vals, cnt)}
        return {"name": ", ".join(self.pool.sources) or "<memory>", "size": len(self.pool),
                "group_counts": counts, "attributes": list(self.diversity.attrs),
                "embedder": self.diversity.embedder.id, "k": self.diversity.config.k,
                "select_k": self.diversity.config.select_k}

    def info(self) -> dict[str, Any]:
        return {"rewriter": self.rewriter.name, "lexicon": lexicon.LEXICON_NAME, "pool": self.pool_info()}

    def score(self, text: str) -> dict[str, Any]:
        with self._lock:
            res = self.diversity.evaluate([text])
        coding = lexicon.code_text(text)
        found = pii.find_pii(text)
        shares, rates, irs, viol = {}, {}, {}, {}
        for a in self.diversity.attrs:
            names = res.groups[a]
            shares[a] = {g: _finite(res.shares[a][0, j]) for j, g in enumerate(names)}
            rates[a] = {g: _finite(res.rates[a][f"sr_{g}"][0]) for g in names}
            irs[a] = {g: _finite(res.rates[a][f"ir_{g}"][0]) for g in names}
            viol[a] = any(v is not None and v < 0.8 for v in irs[a].values())
        return {
            "coded_words": [{"word": w, "start": s, "end": e, "kind": k}
                            for s, e, w, k in lexicon.coded_spans(text)],
            "verdict": coding.verdict,
            "masculine": coding.masculine, "feminine": coding.feminine,
            "lexicon": lexicon.LEXICON_NAME,
            "diversity": {"reward": _finite(res.reward[0]), "n_matched": int(res.n_matched[0]),
                          "shares": shares,
                          "distance": {a: _finite(res.distance[a][0]) for a in self.diversity.attrs}},
            "impact_ratios": irs,
            "selection_rates": rates,
            "four_fifths_violation": viol,
            "pii": {"counts": dict(found.counts), "pii_per_char": found.pii_per_char,
                    "spans": [{"start": s, "end": e, "kind": k} for s, e, k in found.spans]},
        }

    def rewrite_result(self, text: str, rewrite: str) -> dict[str, Any]:
        return {"rewrite": rewrite, "rewriter": self.rewriter.name, "before": self.score(text),
                "after": self.score(rewrite), "diff": word_diff(text, rewrite)}
