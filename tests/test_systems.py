"""Baselines (fairjax.systems, rewriters): lexicon_swap changes coded words only,
inclusion_statement = swap + the fixed statement, best_of_n picks the best faithful sample."""
import re

import numpy as np
import pytest

from fairjax import rewriters as R
from fairjax import systems as B
from fairjax.eval import preservation as P
from fairjax.rewards.embedders import HashingTfidfEmbedder
from fairjax.rewards.lexicon import code_text

CODED = ("Acme | Senior Backend Engineer | Berlin | Remote\n"
         "We are a competitive team and want an aggressive, ambitious rockstar who can lead "
         "our analytics work. You will build Python services with Postgres and Kafka.")


def _words(t):
    return re.findall(r"[\w'-]+|[^\w\s]", t)


def test_lexicon_swap_changes_coded_words_only():
    (out,) = R.LexiconSwap().rewrite([CODED])
    a, b = _words(CODED), _words(out)
    assert len(a) == len(b)  # nothing appended, no word dropped
    changed = [(x, y) for x, y in zip(a, b) if x != y]
    assert changed, "a coded posting must change"
    swaps = {k.lower(): v for k, v in R.GENDER_SWAPS.items()}
    for x, y in changed:
        # only coded words (or the article before one: "an aggressive" -> "a proactive")
        assert x.lower() in swaps and y.lower() == swaps[x.lower()] or x.lower() in ("a", "an"), (x, y)
    before, after = code_text(CODED), code_text(out)
    assert after.masculine < before.masculine
    plain = "Acme | Backend Engineer | Berlin\nYou will build Python services with Postgres."
    assert R.LexiconSwap().rewrite([plain]) == [plain]


def test_inclusion_statement_is_swap_plus_statement():
    (swapped,) = R.LexiconSwap().rewrite([CODED])
    (out,) = R.InclusionStatement().rewrite([CODED])
    assert out == swapped + "\n\n" + R.INCLUSION_STATEMENT
    assert R.InclusionStatement().rewrite([out]) == [out]  # once, not twice
    one_line = "Acme is hiring a competitive engineer."
    assert R.InclusionStatement().rewrite([one_line]) == [
        "Acme is hiring a collaborative engineer. " + R.INCLUSION_STATEMENT]
    assert R.INCLUSION_STATEMENT.startswith("We welcome applicants of every gender")


def test_faithful_mask_and_best_faithful():
    cos = np.array([0.9, 0.95, np.nan, 0.5])
    head = np.array([1.0, 0.5, 1.0, np.nan])
    assert P.faithful_mask(cos, head, 0.8).tolist() == [True, False, False, False]
    assert P.faithful_mask(cos, head, 0.8, require_header=False).tolist() == [True, True, False, False]
    assert P.faithful_mask([0.85], [np.nan], 0.8).tolist() == [True]  # no header field to keep
    rewards = np.array([[5.0, 9.0, 7.0], [1.0, 2.0, 3.0], [4.0, np.nan, 4.5]])
    faithful = np.array([[True, False, True], [False, False, False], [True, True, False]])
    idx, has = P.best_faithful(rewards, faithful)
    assert idx.tolist() == [2, 0, 0] and has.tolist() == [True, False, True]
    lo, has_lo = P.worst_faithful(rewards, faithful)
    assert lo.tolist() == [0, 0, 0] and has_lo.tolist() == [True, False, True]


class _TableReward:
    name = "table"

    def __init__(self, table):
        self.table = table

    def score_texts(self, texts):
        return np.array([self.table[t] for t in texts], np.float64)


def test_best_of_n_picks_the_argmax_among_faithful_candidates():
    orig = CODED
    close_lo = orig.replace("competitive", "collaborative")
    close_hi = R.InclusionStatement().rewrite([orig])[0]
    generic = "We are hiring. Join our team. Apply now."  # highest reward, not the same job
    dropped_header = orig.split("\n", 1)[1]  # body kept, header (company, title, place) lost
    reward = _TableReward({close_lo: 1.0, close_hi: 2.0, generic: 50.0, dropped_header: 40.0})
    faith = B.Faithfulness(HashingTfidfEmbedder(n_features=4096), tau=0.5)
    ok, cos = faith([orig] * 4, [close_lo, close_hi, generic, dropped_header])
    assert ok.tolist() == [True, True, False, False]
    bon = B.BestOfN(sample=None, n=4, reward=reward, faithfulness=faith)
    (pick,) = bon.choose([orig], [[generic], [close_lo], [dropped_header], [close_hi]])
    assert pick == {"index": 3, "faithful": True, "n_faithful": 2, "candidate_reward": 2.0}
    # nothing faithful: the candidate most similar to the original, flagged
    (pick,) = bon.choose([orig], [[generic], [dropped_header]])
    assert pick["index"] == 1 and pick["faithful"] is False and pick["n_faithful"] == 0
    # rewrite_rows joins the chosen sample's row
    rows_by_k = [[{"text": generic}], [{"text": close_hi}]]
    bon2 = B.BestOfN(sample=lambda prompts, rng: rows_by_k.pop(0), n=2, reward=reward,
                     faithfulness=faith)
    (row,) = bon2.rewrite_rows([orig], ["prompt"])
    assert row["text"] == close_hi and row["faithful"] and row["candidate_reward"] == 2.0
    with pytest.raises(ValueError, match="n=0"):
        B.BestOfN(sample=None, n=0, reward=reward, faithfulness=faith)


def test_text_baseline_names():
    assert B.text_baseline("lexicon_swap").name == "lexicon_swap"
    row = B.text_baseline("inclusion_statement").rewrite_rows([CODED])[0]
    assert row["finished"] is True and row["log_prob"] is None
    with pytest.raises(ValueError, match="not a text baseline"):
        B.text_baseline("prompted")
