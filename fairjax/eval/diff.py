"""Word-level diff of two texts (difflib), shared by the HTML report and the local page."""
from __future__ import annotations

import difflib
import re
from typing import Sequence

_TOKEN = re.compile(r"\w+|\s+|[^\w\s]")


def word_diff(before: str, after: str) -> list[dict[str, str]]:
    """[{"op": "equal"|"delete"|"insert", "text"}], adjacent parts of one op merged: the equal +
    delete parts joined give `before`, the equal + insert parts give `after` (words, runs of
    whitespace and single punctuation characters are the tokens compared)."""
    a, b = _TOKEN.findall(before), _TOKEN.findall(after)
    out: list[dict[str, str]] = []

    def add(op: str, toks: Sequence[str]) -> None:
        if not toks:
            return
        if out and out[-1]["op"] == op:
            out[-1]["text"] += "".join(toks)
        else:
            out.append({"op": op, "text": "".join(toks)})

    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            add("equal", a[i1:i2])
        else:
            add("delete", a[i1:i2])
            add("insert", b[j1:j2])
    return out
