"""The job-description rewrite task: read postings, clean them, build the FMs-at-work prompt.

A raw posting becomes `(prompt, response)` where `response` is the cleaned posting (the only
offline action, as upstream) and `prompt` is the FMs-at-work template (reference/fms_at_work.md
§4.2) filled from the record's `location/company/title/technologies` fields or, when they are
missing, from the transparent heuristics below (upstream extracted them with a QA model).

Input: JSONL (one object per line) or CSV (header row). The text field name is configurable;
optional fields: `id`, `reward`, `location`, `company`, `title`, `technologies` (a list, or a
comma/semicolon separated string). A bad line (invalid JSON, not an object, missing or empty text,
wrong field types, non-finite reward) raises `DataError("<file>:<line>: <reason>")`, or with
`on_error="skip"` is skipped and counted in `ReadStats`. Blank lines are ignored.

HTML cleanup (`clean_html`): known HTML tags only (`<p>`/`</p>` -> blank line, `<br>` -> newline,
`<li>` -> "- ", other known tags dropped, their text kept), then entities unescaped. Unlike
upstream `remove_links`, which deleted `<a ...>...</a>` with its text (often the only way to apply),
an anchor becomes its link text, or its URL when the text is empty or shortened with "...".
Unknown angle-bracket words (HN posts write `<at>`, `<company>` as text) are left alone, and so are
the bare spellings of the layout's control strings, `<s>`, `</s>`, `<a>`, `</a>` (no attributes):
a posting that writes "Use <s> and </a> tags" keeps them as text (an anchor needs attributes,
`<a href=...>...</a>`; strikethrough `<s>` is thus kept literally). Control tokens can't arise from
text anyway, because the layout inserts them as ids only.

Instruct models: with a tokenizer that has a chat template the prompt below is not laid out as
bare text but becomes the user turn of a chat, after a system turn `SYSTEM_TEXT` ("You rewrite
job postings with inclusive wording and keep every fact."), and the posting is the assistant turn
(`fairjax.data.layout`, docs/data-and-rewards.md).

Splits are hashed: `split_of(key)` maps sha256(key) to a split by cumulative fractions with the
smallest exact integer modulus (so 0.8/0.1/0.1 is `sha256(id) mod 10` -> 0-7 train, 8 eval,
9 test, which is how ../shared/data/hn_jobs was split).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterator, Mapping, Optional, Sequence

from fairjax.io.tokenizer import DEFAULT_SYSTEM_TEXT

UNKNOWN = "unknown"
# the system turn of a templated job prompt (instruct models); `Tokenizer.system_text`
SYSTEM_TEXT = DEFAULT_SYSTEM_TEXT

PROMPT_TEMPLATE = (
    "Original job description for reference: '{text}' \n"
    "Based on the original description, the job is located in {location}. "
    "The company, {company}, is seeking a qualified individual for the {title} position. "
    "The ideal candidate would be skilled in the following technologies: {technologies}. "
    "{remote_statement} Write a new job description using only the information provided in the "
    "original description."
)
REMOTE_YES = "This job offers the option to work remotely."
REMOTE_NO = "This job does not offer the option to work remotely."
REMOTE_UNKNOWN = "The remote work options for this job are currently unknown."

DEFAULT_FRACTIONS: Mapping[str, float] = {"train": 0.8, "eval": 0.1, "test": 0.1}
OPTIONAL_STR_FIELDS = ("location", "company", "title")


class DataError(ValueError):
    """Bad input data; the message starts with `file:line:` and says what was expected."""


# --------------------------------------------------------------------------- HTML cleanup
_KNOWN_TAGS = ("a|abbr|b|big|blockquote|body|br|center|code|dd|del|div|dl|dt|em|font|h[1-6]|head|hr|"
               "html|i|img|ins|kbd|li|ol|p|pre|s|small|span|strike|strong|sub|sup|table|tbody|td|"
               "th|thead|tr|tt|u|ul")
# `(?!</?[as]>)`: the bare control-string spellings <s> </s> <a> </a> are text, never markup
_TAG_RE = re.compile(rf"(?!</?[as]>)</?(?:{_KNOWN_TAGS})(?:\s[^<>]*)?/?>", re.IGNORECASE)
_ANCHOR_RE = re.compile(r"<a\s([^<>]*)>(.*?)</a\s*>", re.IGNORECASE | re.DOTALL)
_HREF_RE = re.compile(r"""href\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.IGNORECASE)


def _anchor_text(m: re.Match) -> str:
    href = _HREF_RE.search(m.group(1))
    url = html.unescape(next((g for g in href.groups() if g is not None), "")) if href else ""
    text = _TAG_RE.sub("", m.group(2)).strip()
    if not text or (url and (text.endswith("...") or text.endswith("\u2026"))):
        return url
    return text


def normalize_whitespace(text: str) -> str:
    """Collapse runs of spaces/tabs, strip line ends, keep at most one blank line in a row."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u00a0", " ")
    lines = [re.sub(r"[ \t\f\v]+", " ", ln).strip() for ln in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def clean_html(text: str) -> str:
    """HTML posting -> plain text (see module docstring for what happens to links)."""
    text = _ANCHOR_RE.sub(_anchor_text, text)
    text = re.sub(r"<\s*br\s*/?\s*>", "\n", text, flags=re.IGNORECASE)
    text = re.sub(r"</?\s*p(?:\s[^<>]*)?>", "\n\n", text, flags=re.IGNORECASE)
    text = re.sub(r"<\s*li(?:\s[^<>]*)?>", "\n- ", text, flags=re.IGNORECASE)
    text = _TAG_RE.sub("", text)
    return normalize_whitespace(html.unescape(text))


# --------------------------------------------------------------------------- field heuristics
# (canonical name, regex, lower-case substrings one of which any match contains: a cheap prefilter)
TECHNOLOGIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Python", r"python", ("python",)), ("Java", r"java(?!\s*script)", ("java",)),
    ("JavaScript", r"javascript|\bjs\b", ("javascript", "js")),
    ("TypeScript", r"typescript", ("typescript",)), ("Go", r"golang|\bGo\b(?=[,/ )]|$)", ("go",)),
    ("Rust", r"\brust\b", ("rust",)), ("C++", r"c\+\+", ("c++",)), ("C#", r"c#", ("c#",)),
    ("Ruby", r"\bruby\b", ("ruby",)), ("Rails", r"\brails\b", ("rails",)),
    ("PHP", r"\bphp\b", ("php",)), ("Scala", r"\bscala\b", ("scala",)),
    ("Kotlin", r"kotlin", ("kotlin",)), ("Swift", r"\bswift\b", ("swift",)),
    ("Objective-C", r"objective-?c", ("objective",)), ("Elixir", r"elixir", ("elixir",)),
    ("Erlang", r"erlang", ("erlang",)), ("Haskell", r"haskell", ("haskell",)),
    ("Clojure", r"clojure", ("clojure",)), ("OCaml", r"ocaml", ("ocaml",)),
    ("R", r"\bR\b(?=[,/ )])", ("r",)),
    ("React Native", r"react[ -]native", ("react",)),
    ("React", r"\breact(?:\.?js)?\b(?![ -]native)", ("react",)),
    ("Angular", r"angular", ("angular",)), ("Vue", r"\bvue(?:\.?js)?\b", ("vue",)),
    ("Node.js", r"\bnode(?:\.?js)?\b", ("node",)), ("Django", r"django", ("django",)),
    ("Flask", r"\bflask\b", ("flask",)), ("Spring", r"\bspring\b", ("spring",)),
    (".NET", r"\.net\b", (".net",)), ("PostgreSQL", r"postgres", ("postgres",)),
    ("MySQL", r"mysql", ("mysql",)), ("MongoDB", r"mongo", ("mongo",)),
    ("Redis", r"\bredis\b", ("redis",)), ("Elasticsearch", r"elastic ?search", ("elastic",)),
    ("Kafka", r"\bkafka\b", ("kafka",)), ("Spark", r"\bspark\b", ("spark",)),
    ("Hadoop", r"hadoop", ("hadoop",)), ("SQL", r"\bsql\b", ("sql",)),
    ("GraphQL", r"graphql", ("graphql",)), ("AWS", r"\baws\b", ("aws",)),
    ("GCP", r"\bgcp\b|google cloud", ("gcp", "google cloud")), ("Azure", r"\bazure\b", ("azure",)),
    ("Docker", r"docker", ("docker",)), ("Kubernetes", r"kubernetes|\bk8s\b", ("kubernetes", "k8s")),
    ("Terraform", r"terraform", ("terraform",)), ("Linux", r"\blinux\b", ("linux",)),
    ("iOS", r"\bios\b", ("ios",)), ("Android", r"\bandroid\b", ("android",)),
    ("TensorFlow", r"tensorflow", ("tensorflow",)), ("PyTorch", r"pytorch", ("pytorch",)),
    ("machine learning", r"machine learning|\bml\b", ("machine learning", "ml")),
    ("deep learning", r"deep learning", ("deep learning",)), ("Flutter", r"flutter", ("flutter",)),
    ("Unity", r"\bunity\b", ("unity",)), ("Solidity", r"solidity", ("solidity",)),
    ("Snowflake", r"snowflake", ("snowflake",)), ("Airflow", r"airflow", ("airflow",)),
)
_TECH_RES = [(name, re.compile(pat, 0 if name in ("Go", "R") else re.IGNORECASE), hints)
             for name, pat, hints in TECHNOLOGIES]

ROLE_WORDS = ("engineer", "developer", "programmer", "designer", "scientist", "architect",
              "analyst", "manager", "director", "lead", "head of", "devops", "sre", "cto", "vp ",
              "researcher", "administrator", "specialist", "consultant", "recruiter", "marketer",
              "writer", "intern", "product owner", "full stack", "full-stack", "frontend",
              "front-end", "backend", "back-end", "mobile", "data", "qa", "security", "support",
              "sales", "marketing", "accountant", "nurse", "physician", "teacher", "attorney")
_ROLE_RE = re.compile(r"\b(?:" + "|".join(re.escape(w.strip()) for w in ROLE_WORDS) + r")s?\b",
                      re.IGNORECASE)
_TITLE_IN_TEXT_RE = re.compile(
    r"\b((?:(?:senior|sr\.?|junior|jr\.?|staff|principal|lead|head of)\s+)?"
    r"(?:[A-Z][\w+#.-]*\s+){0,3}"
    r"(?:Engineer|Developer|Programmer|Designer|Scientist|Architect|Analyst|Manager|Director|"
    r"Researcher|Administrator|Consultant|Specialist|Recruiter|Marketer))s?\b")
PLACES = ("remote", "worldwide", "anywhere", "usa", "u.s.", "united states", "canada", "uk",
          "united kingdom", "europe", "eu", "germany", "france", "netherlands", "spain", "italy",
          "ireland", "sweden", "norway", "denmark", "finland", "switzerland", "austria", "poland",
          "portugal", "israel", "india", "china", "japan", "singapore", "australia",
          "new zealand", "brazil", "mexico", "argentina", "south africa", "nigeria", "kenya",
          "san francisco", "sf", "bay area", "new york", "nyc", "los angeles", "seattle", "boston",
          "austin", "chicago", "denver", "portland", "atlanta", "washington", "dc", "miami",
          "toronto", "vancouver", "montreal", "london", "berlin", "paris", "amsterdam", "munich",
          "dublin", "stockholm", "zurich", "barcelona", "madrid", "lisbon", "tel aviv",
          "bangalore", "tokyo", "sydney", "melbourne", "palo alto", "mountain view", "san jose",
          "oakland", "san diego", "philadelphia", "pittsburgh", "helsinki", "copenhagen", "oslo",
          "vienna", "prague", "warsaw", "cambridge", "oxford", "edinburgh", "manchester",
          "brooklyn", "redwood city", "san mateo", "menlo park", "sunnyvale", "santa monica",
          "salt lake city", "minneapolis", "detroit", "dallas", "houston", "raleigh", "nashville")
_PLACE_RE = re.compile(r"(?<![\w.])(?:" + "|".join(re.escape(p) for p in PLACES) + r")(?![\w])",
                       re.IGNORECASE)
_US_STATE_RE = re.compile(r",\s*[A-Z]{2}\b")
_URL_RE = re.compile(r"https?://|www\.|\.(?:com|io|ai|co|org|net)\b", re.IGNORECASE)
_EMPLOYMENT_RE = re.compile(r"full[- ]?time|part[- ]?time|contract|freelance|visa|intern(?:s|ship)?\b|"
                            r"\$|€|£|\d+\s*k\b|equity|salary|relocat", re.IGNORECASE)
_ONSITE_RE = re.compile(r"\bon[- ]?site\b|\bin[- ]office\b", re.IGNORECASE)
_NO_REMOTE_RE = re.compile(r"\bno remote\b|\bnot remote\b|\bremote not (?:possible|available|an option)\b",
                           re.IGNORECASE)


def technologies_in(text: str) -> list[str]:
    """Canonical names of the TECHNOLOGIES keywords found in `text`, in order of first mention."""
    low = text.lower()
    found = []
    for name, rx, hints in _TECH_RES:
        if any(h in low for h in hints):
            m = rx.search(text)
            if m:
                found.append((m.start(), name))
    return [name for _, name in sorted(found)]


def _header_parts(text: str) -> list[str]:
    first = next((ln for ln in text.split("\n") if ln.strip()), "")
    for sep in ("|", " - ", " \u2013 ", " \u2014 "):
        parts = [p.strip() for p in first.split(sep) if p.strip()]
        if len(parts) >= (2 if sep == "|" else 3):
            return parts
    return []


def _looks_like_place(part: str) -> bool:
    return bool(_PLACE_RE.search(part) or _US_STATE_RE.search(part))


def extract_fields(text: str) -> dict[str, Any]:
    """Heuristic `location/company/title/technologies/remote` from a posting (None when not found).

    Rules, in order: the first line is an HN header when it splits on "|" into >= 2 parts (or on
    " - " into >= 3); part 0 is the company; a part with a URL or only employment terms (full-time,
    VISA, salary) is skipped; the first part with a role word (engineer, developer, ...) is the
    title; the first part naming a known place (gazetteer above, "City, ST" or "remote") is the
    location. Without a header the title is the first "<Words> Engineer/Developer/..." phrase and the
    location the first gazetteer place in the text. `remote` is True if the location or a header
    part says remote (and not "no remote"), False if the text says "no remote" or the header says
    ONSITE without remote, else None. Technologies: keyword list TECHNOLOGIES.
    """
    parts = _header_parts(text)
    company = title = location = None
    header_remote = header_onsite = False
    for i, part in enumerate(parts):
        low = part.lower()
        header_remote |= "remote" in low and not _NO_REMOTE_RE.search(part)
        header_onsite |= bool(_ONSITE_RE.search(part))
        if i == 0:
            company = re.sub(r"\s*\((?:https?://|www\.)[^)]*\)", "", part).strip() or None
            continue
        if _URL_RE.search(part) and len(part.split()) <= 2:
            continue
        if location is None and _looks_like_place(part):
            location = part
        elif title is None and _ROLE_RE.search(part) and not _looks_like_place(part):
            title = part
    if title is None:
        m = _TITLE_IN_TEXT_RE.search(text)
        title = m.group(1).strip() if m else None
    if location is None:
        m = _PLACE_RE.search(text)
        location = m.group(0) if m else None
    remote: Optional[bool] = None
    if (location and "remote" in location.lower()) or header_remote:
        remote = True
    elif _NO_REMOTE_RE.search(text) or header_onsite:
        remote = False
    techs = technologies_in(text)
    return {"company": company, "location": location, "title": title,
            "technologies": techs or None, "remote": remote}


def remote_statement(location: Optional[str], text: str, remote: Optional[bool] = None) -> str:
    """Upstream rule: "remote" in the location -> yes; "no remote" in the text -> no; else unknown.

    `remote` (e.g. from the header heuristics) decides when the upstream rules are silent.
    """
    if location and "remote" in location.lower():
        return REMOTE_YES
    if _NO_REMOTE_RE.search(text):
        return REMOTE_NO
    if remote is True:
        return REMOTE_YES
    if remote is False:
        return REMOTE_NO
    return REMOTE_UNKNOWN


def build_prompt(text: str, location: Optional[str] = None, company: Optional[str] = None,
                 title: Optional[str] = None, technologies: Optional[Sequence[str] | str] = None,
                 remote: Optional[bool] = None) -> str:
    """The FMs-at-work §4.2 prompt; missing values read "unknown"."""
    if isinstance(technologies, (list, tuple)):
        technologies = ", ".join(technologies)
    return PROMPT_TEMPLATE.format(
        text=text, location=location or UNKNOWN, company=company or UNKNOWN, title=title or UNKNOWN,
        technologies=technologies or UNKNOWN,
        remote_statement=remote_statement(location, text, remote))


# --------------------------------------------------------------------------- splits
def _split_modulus(fractions: Mapping[str, float]) -> tuple[int, list[tuple[str, int]]]:
    if not fractions or any((not isinstance(v, (int, float))) or v < 0 for v in fractions.values()):
        raise ValueError(f"split fractions must be non-negative numbers, got {dict(fractions)}")
    fr = {k: Fraction(v).limit_denominator(10 ** 6) for k, v in fractions.items()}
    if abs(float(sum(fr.values())) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {dict(fractions)} (sum {sum(fractions.values())})")
    mod = math.lcm(*(f.denominator for f in fr.values()))
    bounds, acc = [], 0
    for k, f in fr.items():
        acc += int(f * mod)
        bounds.append((k, acc))
    return mod, bounds


def split_of(key: str, fractions: Mapping[str, float] = DEFAULT_FRACTIONS) -> str:
    """Deterministic split of `key` (an id or the text): sha256(key) mod M against cumulative
    fractions, M the least common denominator (0.8/0.1/0.1 -> M=10)."""
    mod, bounds = _split_modulus(fractions)
    h = int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) % mod
    for name, upper in bounds:
        if h < upper:
            return name
    return bounds[-1][0]


# --------------------------------------------------------------------------- reading
@dataclass
class ReadStats:
    """What `read_records` kept and skipped (`errors` holds "file:line: reason" strings)."""

    lines: int = 0
    kept: int = 0
    skipped: int = 0
    errors: list = field(default_factory=list)

    def report(self) -> str:
        return f"read {self.lines} lines: kept {self.kept}, skipped {self.skipped} bad"


def _parse_float(v: Any, name: str) -> Optional[float]:
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ValueError(f"field '{name}' must be a number, got {type(v).__name__}")
    try:
        x = float(v)
    except ValueError:
        raise ValueError(f"field '{name}' must be a number, got {v!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"field '{name}' must be finite, got {v!r}")
    return x


def _normalize(obj: Any, text_field: str, from_csv: bool, clean: bool) -> dict[str, Any]:
    """Validate one record and return the canonical dict (raises ValueError with the reason)."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if text_field not in obj or obj[text_field] is None:
        raise ValueError(f"missing text field '{text_field}' (present: {sorted(obj)[:12]}); name "
                         "the field that holds the posting (score/rate: --text_field=NAME, train: "
                         "--config.data.text_field=NAME)")
    raw = obj[text_field]
    if not isinstance(raw, str):
        raise ValueError(f"field '{text_field}' must be a string, got {type(raw).__name__}")
    text = clean_html(raw) if clean else normalize_whitespace(raw)
    if not text:
        raise ValueError(f"field '{text_field}' is empty" + (" after HTML cleanup" if raw.strip() else ""))
    rec: dict[str, Any] = {"text": text}
    rid = obj.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int))):
        raise ValueError(f"field 'id' must be a string or integer, got {type(rid).__name__}")
    rec["id"] = str(rid) if rid not in (None, "") else "sha1-" + hashlib.sha1(text.encode()).hexdigest()[:12]
    rec["reward"] = _parse_float(obj.get("reward"), "reward")
    for name in OPTIONAL_STR_FIELDS:
        v = obj.get(name)
        if v is not None and not isinstance(v, str):
            raise ValueError(f"field '{name}' must be a string, got {type(v).__name__}")
        rec[name] = v.strip() if isinstance(v, str) and v.strip() else None
    tech = obj.get("technologies")
    if isinstance(tech, str):
        tech = [t.strip() for t in re.split(r"[,;]", tech) if t.strip()] or None
    elif isinstance(tech, list):
        if not all(isinstance(t, str) for t in tech):
            raise ValueError("field 'technologies' must be a list of strings")
        tech = [t.strip() for t in tech if t.strip()] or None
    elif tech is not None:
        raise ValueError(f"field 'technologies' must be a string or a list of strings, got {type(tech).__name__}")
    rec["technologies"] = tech
    rec["extra"] = {k: v for k, v in obj.items()
                    if k not in (text_field, "id", "reward", "technologies", *OPTIONAL_STR_FIELDS)}
    return rec


def _iter_raw(path: str) -> Iterator[tuple[int, Any, Optional[str]]]:
    """Yield (line number, parsed object or None, parse error or None) for JSONL or CSV."""
    if path.lower().endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                raise DataError(f"{path}:1: empty CSV file (expected a header row)")
            start = reader.line_num + 1
            for row in reader:
                if None in row:
                    yield start, None, f"{len(row[None])} more values than header columns"
                else:
                    yield start, dict(row), None
                start = reader.line_num + 1
        return
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line), None
            except json.JSONDecodeError as e:
                yield n, None, f"invalid JSON ({e.msg} at column {e.colno})"


# what `on_error` takes (`data.on_error`): raise DataError at the first bad record | skip it (counted)
ON_ERROR = ("raise", "skip")


def read_records(path: str | os.PathLike, *, text_field: str = "text", on_error: str = "raise",
                 clean: bool = True, stats: Optional[ReadStats] = None) -> list[dict[str, Any]]:
    """Read and validate a JSONL/CSV file of postings -> canonical records.

    Record keys: id, text (cleaned), reward (float|None), location, company, title (str|None),
    technologies (list|None), extra (other fields), source ("file:line").
    on_error: "raise" -> DataError("file:line: reason"); "skip" -> skipped and counted in `stats`.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {list(ON_ERROR)}, got {on_error!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    stats = stats if stats is not None else ReadStats()
    out = []
    for n, obj, err in _iter_raw(path):
        stats.lines += 1
        if err is None:
            try:
                rec = _normalize(obj, text_field, path.lower().endswith(".csv"), clean)
            except ValueError as e:
                err = str(e)
        if err is not None:
            msg = f"{path}:{n}: {err}"
            if on_error == "raise":
                raise DataError(msg)
            stats.skipped += 1
            stats.errors.append(msg)
            continue
        rec["source"] = f"{path}:{n}"
        out.append(rec)
        stats.kept += 1
    return out


# --------------------------------------------------------------------------- dataset
@dataclass(frozen=True)
class JobExample:
    """A posting ready for the task: prompt (§4.2 template), response (cleaned text), reward."""

    id: str
    prompt: str
    response: str
    reward: Optional[float]
    metadata: dict = field(default_factory=dict, compare=False)


def make_example(rec: Mapping[str, Any], extract: bool = True) -> JobExample:
    """Canonical record -> JobExample, filling missing fields with `extract_fields` heuristics.

    A record with a string `original` field (a rewrite row of `fairjax.data.augment`) is a
    response to the prompt of that original posting: the prompt and its fields come from it."""
    text = rec["text"]
    original = rec.get("extra", {}).get("original")
    basis = original if isinstance(original, str) and original.strip() else text
    guess = extract_fields(basis) if extract else {}
    fields = {k: rec.get(k) or guess.get(k) for k in ("location", "company", "title", "technologies")}
    remote = guess.get("remote")
    prompt = build_prompt(basis, remote=remote, **fields)
    meta = {**fields, "remote": remote, "source": rec.get("source"),
            "extracted": sorted(k for k in fields if not rec.get(k) and guess.get(k)),
            **rec.get("extra", {})}
    return JobExample(id=rec["id"], prompt=prompt, response=text, reward=rec.get("reward"), metadata=meta)


class JobsDataset:
    """A list dataset of `JobExample`s (len / getitem / iter), optionally one hashed split.

    `JobsDataset.from_file(path, split="train", fractions=..., split_key="id")` keeps only records
    whose `split_of(record[split_key])` is `split`; `split=None` keeps everything (use it for
    files that are already split, like ../shared/data/hn_jobs/{train,eval}.jsonl).
    """

    def __init__(self, examples: Sequence[JobExample], read_stats: Optional[ReadStats] = None):
        self.examples = list(examples)
        self.read_stats = read_stats or ReadStats()

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, split: Optional[str] = None,
                  fractions: Mapping[str, float] = DEFAULT_FRACTIONS, split_key: str = "id",
                  text_field: str = "text", on_error: str = "raise", clean: bool = True,
                  extract: bool = True, limit: Optional[int] = None) -> "JobsDataset":
        stats = ReadStats()
        recs = read_records(path, text_field=text_field, on_error=on_error, clean=clean, stats=stats)
        if split is not None:
            if split not in fractions:
                raise ValueError(f"split {split!r} is not one of the fractions' keys {list(fractions)}")
            if split_key not in ("id", "text"):
                raise ValueError(f"split_key must be 'id' or 'text', got {split_key!r}")
            recs = [r for r in recs if split_of(r[split_key], fractions) == split]
        if limit is not None:
            recs = recs[:limit]
        return cls([make_example(r, extract) for r in recs], stats)

    def with_rewards(self, rewards: Sequence[float]) -> "JobsDataset":
        """A copy with `reward` replaced (e.g. precomputed diversity rewards), one per example."""
        if len(rewards) != len(self.examples):
            raise ValueError(f"got {len(rewards)} rewards for {len(self.examples)} examples")
        return JobsDataset([dataclasses.replace(e, reward=float(r)) for e, r in zip(self.examples, rewards)],
                           self.read_stats)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> JobExample:
        return self.examples[i]

    def __iter__(self) -> Iterator[JobExample]:
        return iter(self.examples)
