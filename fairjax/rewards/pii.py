"""Contact data in (generated) job ads: e-mails, phone numbers, URLs and person-name signatures.

Used for the "no leaked contact data" metric: a rewrite should not invent or copy a recruiter's
e-mail address, phone number or name. Detection is by transparent regular expressions:

* email: `local@domain.tld`, and the obfuscated `name [at] domain [dot] com` / `name at domain dot com`;
* phone: 9-15 digits written with separators or a leading `+` (`+44 20 7946 0958`,
  `(415) 555-0133`, `415.555.0133`); plain digit runs such as years or salaries are not phones;
* url: `http(s)://...`, `www....`, and bare `domain.tld/path` for common TLDs;
* name: one or two capitalised words after a contact cue (`Contact: Jane Doe`, `reach out to John`,
  `ask for Maria`, `email Jane`), after a closing with a comma (`Regards, Jane`, `Best,\nJohn`), or
  a dash signature on its own line (`— John`, `-- Jane Doe`; a single '-' is a bullet, not a signature); role words (Engineer, Manager, ...)
  are not names.

Overlapping spans are merged before counting PII characters; `pii_per_char` = PII chars / chars.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

_TLD = r"(?:com|io|org|net|co|ai|dev|app|jobs|us|uk|de|fr|eu|me|tech|xyz|edu|gov)"
PATTERNS: dict[str, re.Pattern] = {
    "email": re.compile(
        r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-zA-Z]{2,}"
        r"|[\w.+-]+\s*[\[(]\s*at\s*[\])]\s*[\w-]+(?:\s*[\[(]\s*dot\s*[\])]\s*[\w-]+)+"
        r"|\b[\w.+-]+\s+at\s+[\w-]+\s+dot\s+" + _TLD + r"\b", re.IGNORECASE),
    "phone": re.compile(
        r"(?<![\w$€£])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){1,4}(?![\w%])"),
    "url": re.compile(
        r"\bhttps?://[^\s<>\"')\]]+|\bwww\.[^\s<>\"')\]]+"
        r"|\b[a-z0-9][a-z0-9-]*(?:\.[a-z0-9-]+)*\." + _TLD + r"(?:/[^\s<>\"')\]]*)?(?![\w@])",
        re.IGNORECASE),
    "name": re.compile(
        r"(?:\b(?i:contact(?:\s+person)?|reach\s+out\s+to|ask\s+for|e-?mail|ping|write\s+to)\s*:?\s*"
        r"|\b(?i:regards|thanks|cheers|best|sincerely),[ \t]*\n?[ \t]*)"
        r"((?!(?:Us|Me|Our|The|We|HR|Careers|Jobs|Recruiting|Hiring|Info|Team|Email|E-mail|Please|Phone|Apply|Via|Send|At|Form|Here)\b)"
        r"[A-Z][a-z]+(?:\s+[A-Z][a-z]+)?)"
        r"|^\s*(?:—|–|--)\s*([A-Z][a-z]+(?:\s+[A-Z][a-z]+)?)\s*$", re.MULTILINE),
}
KINDS = tuple(PATTERNS)


# Capitalised words that follow contact cues in job ads but are roles, not names.
_NOT_NAME = frozenset("""engineer engineers developer developers manager managers designer designers
scientist scientists analyst analysts architect architects owner lead leads director company tech
intern interns recruiter recruiting officer head chief senior junior staff principal product
data software web backend frontend mobile android ios marketer marketing sales screen roles""".split())


def _name_ok(s: str) -> bool:
    return not any(w.lower() in _NOT_NAME for w in s.split())


def _phone_ok(s: str) -> bool:
    digits = sum(ch.isdigit() for ch in s)
    return 9 <= digits <= 15 and (s.lstrip().startswith(("+", "(")) or bool(re.search(r"[\s.-]", s)))


@dataclasses.dataclass(frozen=True)
class PiiReport:
    """Contact data found in one text."""

    counts: dict[str, int]
    spans: tuple[tuple[int, int, str], ...]  # (start, end, kind), merged spans not applied here
    pii_chars: int
    chars: int

    @property
    def pii_per_char(self) -> float:
        return self.pii_chars / self.chars if self.chars else 0.0

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def find_pii(text: str) -> PiiReport:
    """Scan one text; emails win over URLs on the same span (a.b@c.com is not also a URL)."""
    spans: list[tuple[int, int, str]] = []
    taken = np.zeros(len(text) + 1, bool)
    for kind in ("email", "url", "phone", "name"):
        for m in PATTERNS[kind].finditer(text):
            if kind == "name":
                g = 1 if m.group(1) else 2
                s, e = m.span(g)
            else:
                s, e = m.span()
                if kind == "url":  # sentence punctuation after a URL is not part of it
                    e = s + len(m.group().rstrip(".,;:!?"))
            if kind == "phone" and not _phone_ok(m.group()):
                continue
            if kind == "name" and not _name_ok(text[s:e]):
                continue
            if taken[s:e].any():
                continue
            taken[s:e] = True
            spans.append((s, e, kind))
    counts = {k: 0 for k in KINDS}
    for _, _, k in spans:
        counts[k] += 1
    return PiiReport(counts, tuple(sorted(spans)), int(taken[: len(text)].sum()), len(text))


class PiiScorer:
    """Scorer: PII characters per character of each text (0 = no contact data), float64 [N]."""

    name = "pii_per_char"

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([find_pii(t).pii_per_char for t in texts], np.float64)
