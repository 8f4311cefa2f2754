"""Rewriters for RATE: change one attribute W of a text, leave the rest alone (as far as they can).

One interface, `Rewriter.rewrite(texts, target_w) -> texts`: row i is rewritten so that its
attribute takes the value target_w[i] (RATE: rewrite = Re(X, 1 - W), rewrite of rewrite =
Re(Re(X, 1 - W), W); see `fairjax/eval/rate.py`). Attribute classifiers are plain functions
`texts -> np.ndarray[bool]`, registered with their default rewriter in `ATTRIBUTES`.

* `LexiconRewriter`: deterministic rewriter for the attribute "masculine-coded wording" (W = 1 when
  a text has more masculine- than feminine-coded words in the Gaucher et al. (2011) lexicon of
  `fairjax.rewards.lexicon`). Towards W = 0 it swaps masculine-coded terms for neutral or
  feminine-coded alternatives ("competitive" -> "collaborative", "aggressive" -> "proactive",
  "rockstar" -> "expert", ...); towards W = 1 it applies the inverse table. Case ("Lead", "LEAD")
  and a preceding "a"/"an" are adjusted. Swaps alone do not always flip W (feminine-coded words of
  the original stay), so by default a short balancing sentence is appended when the classifier
  still disagrees with the target; the sentences are removed again by the next rewrite, so a
  rewrite of a rewrite comes back close to the original. The remaining imperfection (inverse swaps
  hitting words the original already had) is exactly the kind RATE's rewrite-of-rewrite design is
  meant to cancel; `flip_rate` measures how often a rewrite reached its target.
* `ModelRewriter`: wraps any `generate(prompts: list[str]) -> list[str]` (a fairjax policy, an
  API client) with a RATE-style rewrite prompt.

Baselines for job postings (`TextRewriter`: `name` + `rewrite(texts) -> texts`, no target; the
systems of `fairjax.evaluate` and `fairjax.rewrite`):

* `LexiconSwap` ("lexicon_swap"): the swap table towards neutral wording, no appended sentences;
* `InclusionStatement` ("inclusion_statement"): the lexicon swap plus `INCLUSION_STATEMENT`
  appended once (what many hiring teams do first).

This module imports numpy and `fairjax.rewards` / `fairjax.eval` only; never jax at import time.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from fairjax.rewards.lexicon import code_text


@runtime_checkable
class Rewriter(Protocol):
    """Rewrites texts [N] so that the attribute takes target_w [N] (bool); returns N strings."""

    name: str

    def rewrite(self, texts: Sequence[str], target_w: np.ndarray) -> list[str]:
        ...


def _check_targets(texts: Sequence[str], target_w) -> np.ndarray:
    tw = np.asarray(target_w, bool).ravel()
    if tw.shape[0] != len(texts):
        raise ValueError(f"rewrite: {len(texts)} texts but {tw.shape[0]} target_w values")
    return tw


# ----------------------------------------------------------------------------- classifiers
def w_gender_coded(texts: Sequence[str]) -> np.ndarray:
    """[N] bool: True where a text is masculine-coded (more masculine- than feminine-coded words,
    i.e. a "slightly/strongly masculine-coded" Gender Decoder verdict)."""
    return np.array([(c := code_text(t)).masculine > c.feminine for t in texts], bool)


def flip_rate(classifier: Callable[[Sequence[str]], np.ndarray], texts: Sequence[str],
              target_w) -> float:
    """Fraction of texts whose classified attribute equals target_w (rewrite success rate)."""
    tw = _check_targets(texts, target_w)
    return float((classifier(texts) == tw).mean()) if len(texts) else float("nan")


# ----------------------------------------------------------------------------- lexicon rewriter
# masculine-coded term -> neutral / feminine-coded alternative. The alternatives are distinct, not
# masculine-coded, and rare in HN postings, so the inverse table (W -> 1) is well defined and
# mostly touches only words that an earlier rewrite put there.
GENDER_SWAPS: dict[str, str] = {
    "competitive": "collaborative", "competition": "cooperation", "compete": "cooperate",
    "competing": "cooperating", "competitors": "peers",
    "aggressive": "proactive", "aggressively": "proactively",
    "dominant": "prominent", "dominate": "excel in", "dominance": "prominence",
    "rockstar": "expert", "rockstars": "experts", "rock star": "expert",
    "ninja": "specialist", "ninjas": "specialists",
    "ambitious": "eager", "ambition": "eagerness",
    "assertive": "articulate", "confident": "assured", "self-confident": "self-assured",
    "self-reliant": "resourceful", "decisive": "clear-minded", "fearless": "bold",
    "lead": "guide", "leads": "guides", "leading": "guiding", "leader": "mentor",
    "leaders": "mentors", "leadership": "mentorship",
    "analytics": "metrics", "analysis": "examination", "analyze": "examine", "analyzing": "examining",
    "analyzes": "examines", "analyst": "data specialist", "analysts": "data specialists",
    "analytical": "thoughtful",
    "challenge": "puzzle", "challenges": "puzzles", "challenging": "rewarding",
    "decision": "choice", "decisions": "choices", "decision-making": "judgment", "decide": "choose",
    "autonomous": "self-directed", "autonomy": "self-direction", "autonomously": "self-directedly",
    "independent": "self-managing", "independently": "on your own", "independence": "self-management",
    "active": "engaged", "logic": "reasoning", "objective": "aim", "principles": "tenets",
    "determine": "assess", "determined": "resolute", "determining": "assessing",
    "hierarchy": "org chart", "hierarchies": "org charts", "hierarchical": "layered",
    "superior": "top-notch", "intellectual": "scholarly",
}

# Appended when swaps alone do not reach the target (3 coded words each); removed by the next rewrite.
BALANCE_SENTENCES = {
    False: ("We value supportive, cooperative and understanding teammates.",
            "We are committed to a warm, trusting and responsive culture.",
            "Everyone here is kind, considerate and interpersonal by habit."),
    True: ("The role calls for a confident, ambitious and decisive self-starter.",
           "You are competitive, assertive and independent.",
           "We expect an analytical, determined and outspoken individual."),
}


def _match_case(src: str, repl: str) -> str:
    if src.isupper() and len(src) > 1:
        return repl.upper()
    if src[:1].isupper():
        return repl[:1].upper() + repl[1:]
    return repl


def _article(art: str, word: str) -> str:
    new = "an" if word[:1].lower() in "aeiou" else "a"
    return _match_case(art, new)


class LexiconRewriter:
    """Deterministic swap-table rewriter (see module docstring).

    swaps: {term with W=1 : term with W=0} (terms sharing an alternative invert to the first);
    classifier: texts -> bool W (default w_gender_coded);
    balance: append `BALANCE_SENTENCES[target]` (as many as needed, at most 3) when swaps do not
    reach the target.
    """

    def __init__(self, swaps: Mapping[str, str] = GENDER_SWAPS,
                 classifier: Callable[[Sequence[str]], np.ndarray] = w_gender_coded,
                 balance: bool = True, balance_sentences: Mapping[bool, Sequence[str]] = BALANCE_SENTENCES,
                 name: str = "lexicon_gender_coded"):
        to0 = {k.lower(): v for k, v in swaps.items()}
        to1: dict[str, str] = {}
        for k, v in to0.items():  # several terms may share an alternative: the first one wins
            to1.setdefault(v.lower(), k)
        bad = sorted(set(to0) & set(to1))
        if bad:
            raise ValueError(f"swap table terms are also alternatives (not invertible): {bad}")
        self._tables = {False: (to0, self._pattern(to0)), True: (to1, self._pattern(to1))}
        self.classifier = classifier
        self.balance = balance
        self.balance_sentences = {bool(k): tuple(v) for k, v in balance_sentences.items()}
        all_sent = [s for v in self.balance_sentences.values() for s in v]
        self._strip = re.compile(r"\s*(?:" + "|".join(re.escape(s) for s in all_sent) + r")") \
            if all_sent else None
        self.name = name

    @staticmethod
    def _pattern(table: Mapping[str, str]) -> re.Pattern:
        alts = "|".join(re.escape(k).replace(r"\ ", r"\s+") for k in sorted(table, key=len, reverse=True))
        # optional article so "an aggressive" -> "a proactive"; hyphen counts as part of a word so
        # "lead-software-engineer" (a URL slug) is left alone but "decision-making" matches whole.
        return re.compile(r"(?<![\w-])(?:(?P<art>an?)\s+)?(?P<term>" + alts + r")(?![\w-])",
                          re.IGNORECASE)

    def swap(self, text: str, target: bool) -> str:
        """Apply the swap table towards target (False: masculine -> alternative; True: inverse)."""
        table, pat = self._tables[bool(target)]

        def sub(m: re.Match) -> str:
            term = m.group("term")
            new = _match_case(term, table[re.sub(r"\s+", " ", term.lower())])
            art = m.group("art")
            return (_article(art, new) + m.group(0)[len(art):m.start("term") - m.start()] + new
                    if art else new)

        return pat.sub(sub, text)

    def rewrite(self, texts: Sequence[str], target_w) -> list[str]:
        """texts [N], target_w [N] bool -> N rewritten texts."""
        tw = _check_targets(texts, target_w)
        out = []
        for text, t in zip(texts, tw):
            t = bool(t)
            new = self._strip.sub("", text) if self._strip is not None else text
            new = self.swap(new, t)
            if self.balance:
                for sentence in self.balance_sentences.get(t, ()):
                    if bool(self.classifier([new])[0]) == t:
                        break
                    new = new.rstrip() + ("\n\n" if "\n" in new else " ") + sentence
            out.append(new)
        return out


# ----------------------------------------------------------------------------- baselines
@runtime_checkable
class TextRewriter(Protocol):
    """Rewrites postings [N] -> N postings (no target attribute): a baseline or a policy."""

    name: str

    def rewrite(self, texts: Sequence[str]) -> list[str]:
        ...


# The fixed statement of the `inclusion_statement` baseline (issue 23: measured elsewhere at
# +0.030 female share of matched candidates at encoder similarity 0.985).
INCLUSION_STATEMENT = ("We welcome applicants of every gender and background. We offer flexible "
                       "hours, parental leave and mentorship, and we value collaboration and "
                       "supportive teamwork.")


class LexiconSwap:
    """Masculine-coded terms swapped for their `GENDER_SWAPS` alternatives; nothing appended, no
    other character changed."""

    name = "lexicon_swap"

    def __init__(self, swaps: Mapping[str, str] = GENDER_SWAPS):
        self._lex = LexiconRewriter(swaps, balance=False)

    def rewrite(self, texts: Sequence[str]) -> list[str]:
        return [self._lex.swap(t, False) for t in texts]


def append_sentence(text: str, sentence: str) -> str:
    """`text` + `sentence` (a blank line before it when the text has lines, else a space); a text
    that already ends with it is returned unchanged."""
    body = text.rstrip()
    if body.endswith(sentence):
        return text
    return body + ("\n\n" if "\n" in body else " ") + sentence if body else sentence


class InclusionStatement:
    """`LexiconSwap` then `statement` (default `INCLUSION_STATEMENT`) appended once."""

    name = "inclusion_statement"

    def __init__(self, statement: str = INCLUSION_STATEMENT, swaps: Mapping[str, str] = GENDER_SWAPS):
        self.statement = statement
        self._swap = LexiconSwap(swaps)

    def rewrite(self, texts: Sequence[str]) -> list[str]:
        return [append_sentence(t, self.statement) for t in self._swap.rewrite(texts)]


TEXT_BASELINES: dict[str, Callable[[], TextRewriter]] = {
    "lexicon_swap": LexiconSwap, "inclusion_statement": InclusionStatement}


# ----------------------------------------------------------------------------- model rewriter
REWRITE_TEMPLATE = ("{text}\n\n[Adjust this job posting so it is {w_string}, but change *nothing* "
                    "else. Reply with the rewritten posting only.]\n")
GENDER_W_STRINGS = {
    True: "worded with masculine-coded language (words like competitive, dominant, ambitious, "
          "decisive, leader)",
    False: "worded with gender-neutral language (no masculine-coded words like competitive, "
           "dominant, ambitious, decisive, leader)",
}


class ModelRewriter:
    """Adapter: any `generate(prompts: list[str]) -> list[str]` becomes a Rewriter.

    The prompt is `template.format(text=..., w_string=w_strings[target])` (RATE's "Adjust this ... so
    it's {w}, but change *nothing* else" pattern). `postprocess` cleans each completion (default:
    strip whitespace); an empty completion falls back to the input text when `keep_on_empty`.
    `batch_size` splits the prompts into calls of at most that many.
    """

    def __init__(self, generate: Callable[[list[str]], list[str]],
                 w_strings: Mapping[bool, str] = GENDER_W_STRINGS, template: str = REWRITE_TEMPLATE,
                 postprocess: Callable[[str], str] = str.strip, batch_size: Optional[int] = None,
                 keep_on_empty: bool = True, name: str = "model"):
        if "{text}" not in template or "{w_string}" not in template:
            raise ValueError("rewrite template needs the fields {text} and {w_string}")
        missing = [w for w in (True, False) if w not in w_strings]
        if missing:
            raise ValueError(f"w_strings lacks descriptions for W={missing}")
        self.generate, self.template, self.postprocess = generate, template, postprocess
        self.w_strings = dict(w_strings)
        self.batch_size, self.keep_on_empty, self.name = batch_size, keep_on_empty, name

    def prompts(self, texts: Sequence[str], target_w) -> list[str]:
        tw = _check_targets(texts, target_w)
        return [self.template.format(text=t, w_string=self.w_strings[bool(w)]) for t, w in zip(texts, tw)]

    def rewrite(self, texts: Sequence[str], target_w) -> list[str]:
        prompts = self.prompts(texts, target_w)
        bs = self.batch_size or max(len(prompts), 1)
        outs: list[str] = []
        for s in range(0, len(prompts), bs):
            got = list(self.generate(prompts[s:s + bs]))
            if len(got) != len(prompts[s:s + bs]):
                raise ValueError(f"generate returned {len(got)} completions for "
                                 f"{len(prompts[s:s + bs])} prompts")
            outs.extend(got)
        res = [self.postprocess(o) for o in outs]
        return [t if (not r and self.keep_on_empty) else r for t, r in zip(texts, res)]


# ----------------------------------------------------------------------------- registry
ATTRIBUTES: dict[str, tuple[Callable[[Sequence[str]], np.ndarray], Callable[[], Rewriter]]] = {
    "gender_coded": (w_gender_coded, LexiconRewriter),
}


def rate_rewrites(texts: Sequence[str], rewriter: Rewriter,
                  classifier: Callable[[Sequence[str]], np.ndarray]) -> dict[str, object]:
    """RATE's data step: W = classifier(texts); rewrite = Re(X, 1-W); rewritten rewrite = Re(rewrite, W).

    Returns {"w": [N] bool, "rewrite": [N] str, "rewritten rewrite": [N] str,
    "flip_rate_rewrite", "flip_rate_rewritten_rewrite"} (classifier agreement with the targets).
    """
    w = np.asarray(classifier(texts), bool)
    rw = rewriter.rewrite(texts, ~w)
    rr = rewriter.rewrite(rw, w)
    return {"w": w, "rewrite": rw, "rewritten rewrite": rr,
            "flip_rate_rewrite": flip_rate(classifier, rw, ~w),
            "flip_rate_rewritten_rewrite": flip_rate(classifier, rr, w)}
