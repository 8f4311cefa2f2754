"""Gender-coded wording in job ads (Gaucher, Friesen & Kay 2011, "Evidence that gendered wording in
job advertisements exists and sustains gender inequality", JPSP 101(1), appendix word lists).

The stem lists below were written for fairjax from the paper's appendix (a trailing `*` = any word
starting with the stem; otherwise the word must match exactly). Words are lower-cased runs of
letters, hyphens kept ("self-reliant").

Verdict, as the Gender Decoder reports it, from d = feminine - masculine (occurrence counts):
  d > 3 strongly feminine-coded; 1..3 slightly feminine-coded; 0 neutral (also when no coded word
  occurs); -3..-1 slightly masculine-coded; d < -3 strongly masculine-coded.
Coded ratio = (masculine - feminine) / (masculine + feminine) in [-1, 1], 0 when no coded word.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

MASCULINE = (
    "active", "adventurous", "aggress*", "ambitio*", "analy*", "assert*", "athlet*", "autonom*",
    "boast*", "challeng*", "compet*", "confident", "courag*", "decide", "decisive", "decision*",
    "determin*", "dominan*", "force*", "greedy", "headstrong", "hierarch*", "hostil*", "impulsive",
    "independen*", "individual*", "intellect*", "lead*", "logic", "masculine", "objective",
    "opinion", "outspoken", "persist", "principle*", "reckless", "stubborn", "superior",
    "self-confiden*", "self-relian*", "self-sufficien*",
)
FEMININE = (
    "affectionate", "child*", "cheer*", "commit*", "communal", "compassion*", "connect*",
    "considerate", "cooperat*", "depend*", "emotiona*", "empath*", "feminine", "flatterable",
    "gentle", "honest", "interpersonal", "interdependen*", "interpersona*", "kind", "kinship",
    "loyal*", "modesty", "nag", "nurtur*", "pleasant*", "polite", "quiet*", "respon*", "sensitiv*",
    "submissive", "support*", "sympath*", "tender*", "together*", "trust*", "understand*", "warm*",
    "whin*", "yield*",
)
VERDICTS = ("strongly masculine-coded", "slightly masculine-coded", "neutral",
            "slightly feminine-coded", "strongly feminine-coded")
STRONG = 3  # |feminine - masculine| above this is "strongly" coded

_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")


def _compile(stems: Sequence[str]) -> re.Pattern:
    alts = sorted((re.escape(s[:-1]) + r"[a-z\-]*" if s.endswith("*") else re.escape(s)
                   for s in stems), key=len, reverse=True)
    return re.compile("^(?:" + "|".join(alts) + ")$")


_MASC, _FEM = _compile(MASCULINE), _compile(FEMININE)


@dataclasses.dataclass(frozen=True)
class Coding:
    """Gender-coded wording of one text."""

    masculine: int
    feminine: int
    masculine_words: tuple[str, ...]
    feminine_words: tuple[str, ...]
    n_words: int

    @property
    def coded_ratio(self) -> float:
        tot = self.masculine + self.feminine
        return (self.masculine - self.feminine) / tot if tot else 0.0

    @property
    def verdict(self) -> str:
        return verdict(self.masculine, self.feminine)


def verdict(masculine: int, feminine: int) -> str:
    """Gender Decoder category from the two counts (thresholds in the module docstring)."""
    d = feminine - masculine
    if d == 0:
        return "neutral"
    side = "feminine" if d > 0 else "masculine"
    return f"{'strongly' if abs(d) > STRONG else 'slightly'} {side}-coded"


def code_text(text: str) -> Coding:
    """Count masculine/feminine-coded words (occurrences) in one text."""
    words = _WORD.findall(text.lower())
    masc = tuple(w for w in words if _MASC.match(w))
    fem = tuple(w for w in words if _FEM.match(w))
    return Coding(len(masc), len(fem), masc, fem, len(words))


LEXICON_NAME = ("Gaucher, Friesen & Kay (2011) gender-coded word lists "
                "(as used by the Gender Decoder)")


def coded_spans(text: str) -> list[tuple[int, int, str, str]]:
    """(start, end, word, kind) of every coded word occurrence in `text`, kind "masculine" or
    "feminine", offsets into `text` itself (the words and counts are those of `code_text`)."""
    # lower-case character by character so offsets stay those of the original text (a few
    # characters lower-case to two, e.g. "İ"; they are never [a-z] letters and stay as they are)
    low = "".join(c if len(lc := c.lower()) != 1 else lc for c in text)
    out = []
    for m in _WORD.finditer(low):
        w = m.group()
        kind = "masculine" if _MASC.match(w) else "feminine" if _FEM.match(w) else None
        if kind:
            out.append((m.start(), m.end(), text[m.start():m.end()], kind))
    return out


MODES = ("ratio", "difference")  # the scores of GenderCodedScorer (`reward.gender_coded.mode`)


@dataclasses.dataclass(frozen=True)
class GenderCodedConfig:
    """`reward.gender_coded`: which GenderCodedScorer score the reward takes −|score| of."""

    mode: str = "ratio"  # ratio | difference

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}; expected one of {list(MODES)}")


class GenderCodedScorer:
    """Scorer: per text, `ratio` = (masc - fem)/(masc + fem) (default) or `difference` = masc - fem.

    Positive = masculine-leaning wording. Use `-score` (or `abs`) as a penalty in a reward.
    """

    MODES = MODES

    def __init__(self, mode: str = "ratio"):
        if mode not in self.MODES:
            raise ValueError(f"GenderCodedScorer mode {mode!r}; expected one of {list(self.MODES)}")
        self.mode = mode
        self.name = f"gender_coded_{mode}"

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        """texts [N] -> float64 [N]."""
        out = np.empty(len(texts), np.float64)
        for i, t in enumerate(texts):
            c = code_text(t)
            out[i] = c.coded_ratio if self.mode == "ratio" else c.masculine - c.feminine
        return out
