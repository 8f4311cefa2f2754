"""fairjax.rewriters: lexicon rewriter (gender-coded wording), classifier, model adapter."""
import numpy as np
import pytest

from fairjax import rewriters as RW
from fairjax.rewards.lexicon import code_text

MASC = "We want an aggressive, competitive rockstar to Lead our team and make decisions."
NEUTRAL = "We are a friendly team building tools for gardeners."


def test_classifier_uses_lexicon():
    w = RW.w_gender_coded([MASC, NEUTRAL, "Supportive, understanding and ambitious."])
    np.testing.assert_array_equal(w, [True, False, False])


def test_swap_preserves_case_and_articles():
    rw = RW.LexiconRewriter(balance=False)
    out = rw.swap("An aggressive Rockstar will LEAD; a ambitious analyst; lead-software-engineer; "
                  "decision-making; rock  star", False)
    assert out == ("A proactive Expert will GUIDE; an eager data specialist; lead-software-engineer; "
                   "judgment; expert")
    assert rw.swap("A proactive Expert will GUIDE", True) == "An aggressive Rockstar will LEAD"


def test_rewrite_flips_and_rewrite_of_rewrite_returns():
    rw = RW.LexiconRewriter()
    texts = [MASC, NEUTRAL]
    w = RW.w_gender_coded(texts)
    res = RW.rate_rewrites(texts, rw, RW.w_gender_coded)
    assert res["flip_rate_rewrite"] == 1.0 and res["flip_rate_rewritten_rewrite"] == 1.0
    np.testing.assert_array_equal(RW.w_gender_coded(res["rewrite"]), ~w)
    assert code_text(res["rewrite"][0]).masculine == 0  # every masculine term of MASC is swapped
    assert res["rewritten rewrite"][0] == MASC  # swaps invert exactly here
    # the neutral text gets a balancing sentence, which the rewrite of the rewrite removes again
    assert res["rewrite"][1].startswith(NEUTRAL) and res["rewrite"][1] != NEUTRAL
    assert res["rewritten rewrite"][1] == NEUTRAL
    assert rw.rewrite(texts, [True, True])[0] == MASC  # already at target: unchanged
    assert isinstance(rw, RW.Rewriter)


def test_without_balance_flip_can_fail():
    rw = RW.LexiconRewriter(balance=False)
    assert rw.rewrite([NEUTRAL], [True]) == [NEUTRAL]
    assert RW.flip_rate(RW.w_gender_coded, [NEUTRAL], [True]) == 0.0


def test_swap_table_must_be_invertible():
    with pytest.raises(ValueError, match="not invertible"):
        RW.LexiconRewriter(swaps={"bold": "brave", "brave": "kind"})
    with pytest.raises(ValueError, match="2 texts but 1"):
        RW.LexiconRewriter().rewrite(["a", "b"], [True])


def test_model_rewriter_adapter():
    calls = []

    def generate(prompts):
        calls.append(list(prompts))
        return [" OUT:" + p.split("\n")[0] + " " if "neutral" in p else "" for p in prompts]

    mr = RW.ModelRewriter(generate, batch_size=2)
    out = mr.rewrite(["one", "two", "three"], np.array([False, True, False]))
    assert [len(c) for c in calls] == [2, 1]
    assert out == ["OUT:one", "two", "OUT:three"]  # empty completion keeps the input
    assert "gender-neutral" in mr.prompts(["x"], [False])[0] and "{" not in mr.prompts(["x"], [True])[0]
    with pytest.raises(ValueError, match="completions"):
        RW.ModelRewriter(lambda p: [], name="bad").rewrite(["x"], [True])
    with pytest.raises(ValueError, match="template"):
        RW.ModelRewriter(generate, template="no fields")
