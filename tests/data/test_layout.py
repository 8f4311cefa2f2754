"""Token layout: fixture equality with upstream DataPoint/collate, multi-turn, truncation, pairs."""
import json

import numpy as np
import pytest

from fairjax.data.layout import (LayoutStats, SequenceTooLongError, Truncation, bucket_for, collate,
                                 collate_pairs, layout, layout_example, layout_pair, prompt_tokens)
from fairjax.io.tokenizer import Tokenizer

KEYS = ("tokens", "state_idxs", "action_idxs", "rewards", "terminals")


@pytest.fixture(scope="module")
def tok(fixtures_dir):
    return Tokenizer.from_dir(fixtures_dir / "gpt2_tiny" / "hf")


@pytest.fixture(scope="module")
def meta(fixtures_dir):
    return json.loads((fixtures_dir / "ilql_tiny" / "meta.json").read_text())


class CharTok:
    """Fake tokenizer (one id per character) implementing the layout's tokenizer contract."""
    eoa_id, boa_id, eod_id, bos_id, eos_id, pad_id = 1000, 1001, 1002, 1003, 1004, 1005

    def encode_text(self, text):
        return [ord(c) % 900 for c in text]


def _episodes(tok, meta):
    return [layout_example(tok, d["prompt"], d["action"], d["env_reward"]) for d in meta["datapoints"]]


def test_datapoints_match_upstream(tok, meta):
    assert tok.pad_id == meta["special_token_ids"]["pad"]
    for d, ep in zip(meta["datapoints"], _episodes(tok, meta)):
        for k in KEYS:
            np.testing.assert_array_equal(getattr(ep, k), np.asarray(d[k]), err_msg=k)
        assert ep.truncated == ""


def test_collate_matches_upstream_batch(tok, meta, fixtures_dir):
    ref = np.load(fixtures_dir / "ilql_tiny" / "batch.npz")
    batch = collate(_episodes(tok, meta), tok.pad_id)
    assert sorted(batch) == sorted(ref.files)
    for k in ref.files:
        assert batch[k].dtype == ref[k].dtype, k
        np.testing.assert_array_equal(batch[k], ref[k], err_msg=k)


def test_masks_and_extras(tok, meta):
    eps = _episodes(tok, meta)
    for ep in eps:
        # response mask marks exactly the action targets tokens[action_idxs + 1]; the last is </a>
        assert ep.response_mask.sum() == len(ep.action_idxs)
        assert ep.tokens[ep.action_idxs[-1] + 1] == tok.eoa_id
        assert ep.prompt_mask[0] == 1 and ep.prompt_mask[ep.action_idxs[0]] == 1  # <s> and </s>
        assert ep.prompt_mask[-1] == 0 and ep.response_mask[-1] == 0  # </eod> is neither
    assert max(e.length for e in eps) > 16  # so the (16, 64) buckets pick 64 below
    # the same checks for every row order: nothing may assume which episode is the longest
    for order in (list(range(len(eps))), list(range(len(eps)))[::-1]):
        rows = [eps[i] for i in order]
        b = collate(rows, tok.pad_id, extras=True, buckets=(16, 64))
        assert b["tokens"].shape[1] == 64 and b["state_idxs"].shape[1] == 64
        assert b["action_idxs"].shape[1] == 63
        np.testing.assert_allclose(b["sequence_reward"],
                                   [meta["datapoints"][i]["env_reward"] for i in order])
        assert (b["prompt_mask"] * b["response_mask"]).sum() == 0
        for r, ep in enumerate(rows):
            assert b["terminals"][r, ep.num_states - 1] == 1  # the episode's own last state
            assert (b["terminals"][r, ep.num_states:] == 1).all()  # state padding is terminal
            assert (b["terminals"][r, :ep.num_states - 1] == 0).all()
            np.testing.assert_array_equal(b["tokens"][r, :ep.length], ep.tokens)


def test_literal_control_strings_stay_text(tok):
    ep = layout_example(tok, "say </a> and <s>", "ok </s> done", 1.0)
    n_ctrl = np.isin(ep.tokens, [tok.eoa_id, tok.bos_id, tok.eos_id, tok.eod_id]).sum()
    assert n_ctrl == 4  # only the inserted <s> </s> </a> </eod>


def test_multi_turn_layout():
    t = CharTok()
    seq = [("ab", None), ("xyz", 2.0), ("c", None), ("uv", -1.0)]
    ep = layout(t, seq, True, token_reward=0.5)
    # <s> a b </s> x y z </a> c </s> u v </a> </eod>
    #  0  1 2  3   4 5 6  7   8  9  10 11 12   13
    np.testing.assert_array_equal(ep.tokens[[0, 3, 7, 9, 12, 13]], [t.bos_id, t.eos_id, t.eoa_id,
                                                                     t.eos_id, t.eoa_id, t.eod_id])
    np.testing.assert_array_equal(ep.action_idxs, [3, 4, 5, 6, 9, 10, 11])
    np.testing.assert_array_equal(ep.state_idxs, [3, 4, 5, 6, 9, 10, 11, 13])
    np.testing.assert_allclose(ep.rewards, [0.5, 0.5, 0.5, 2.5, 0.5, 0.5, -0.5])
    np.testing.assert_array_equal(ep.terminals, [0] * 7 + [1])
    assert ep.sequence_reward == 1.0
    # agent first -> <a>; non-terminal -> no </eod>, final state is the last token
    ep2 = layout(t, [("hi", 1.0), ("ok", None)], False)
    assert ep2.tokens[0] == t.boa_id and ep2.tokens[-1] == t.eos_id
    np.testing.assert_array_equal(ep2.action_idxs, [0, 1, 2])
    assert ep2.state_idxs[-1] == len(ep2.tokens) - 1 and ep2.terminals[-1] == 0


@pytest.mark.parametrize("bad, msg", [
    ([], "at least one"), ([("a", None), ("b", None)], "alternate"),
    ([("a", 1.0), ("b", 2.0)], "alternate"), ([("a", None), ("b", float("nan"))], "non-finite"),
    (["a"], "pair")])
def test_bad_sequences(bad, msg):
    with pytest.raises(ValueError, match=msg):
        layout(CharTok(), bad, True)


def test_token_reward_callable_shape_checked():
    with pytest.raises(ValueError, match="token_reward returned shape"):
        layout(CharTok(), [("a", None), ("b", 1.0)], True, token_reward=lambda t: np.zeros(2))


def test_truncation_trims_prompt_and_keeps_terminal_reward(tok, meta):
    d = meta["datapoints"][0]
    full = layout_example(tok, d["prompt"], d["action"], d["env_reward"])
    n_resp = len(tok.encode_text(d["action"]))
    for side in ("left", "right"):
        st = LayoutStats()
        max_len = n_resp + 4 + 5
        ep = layout_example(tok, d["prompt"], d["action"], d["env_reward"],
                            truncation=Truncation(max_len=max_len, prompt_side=side), stats=st)
        assert ep.length == max_len and ep.truncated == "prompt"
        assert ep.rewards[-1] == d["env_reward"] and ep.terminals[-1] == 1
        assert ep.tokens[-2:].tolist() == [tok.eoa_id, tok.eod_id]
        assert st.prompt_trimmed == 1 and st.prompt_tokens_removed == full.length - max_len
        p = tok.encode_text(d["prompt"])
        kept = ep.tokens[1:6].tolist()
        assert kept == (p[-5:] if side == "left" else p[:5])
        # the response is untouched
        np.testing.assert_array_equal(ep.tokens[ep.action_idxs[0] + 1:], full.tokens[full.action_idxs[0] + 1:])


def test_truncation_response_overflow_policies(tok, meta):
    d = meta["datapoints"][0]
    n_resp = len(tok.encode_text(d["action"]))
    max_len = n_resp  # cannot fit response + 4 control tokens
    st = LayoutStats()
    ep = layout_example(tok, d["prompt"], d["action"], -3.0, stats=st,
                        truncation=Truncation(max_len=max_len, min_prompt_tokens=2))
    assert ep.length == max_len and "response" in ep.truncated
    assert ep.tokens[-2:].tolist() == [tok.eoa_id, tok.eod_id]
    assert ep.rewards[-1] == -3.0 and ep.terminals.tolist()[-2:] == [0, 1]
    assert ep.response_mask.sum() == len(ep.action_idxs)
    assert st.response_truncated == 1 and st.prompt_trimmed == 1
    assert ep.tokens[1:3].tolist() == tok.encode_text(d["prompt"])[-2:]  # min prompt kept
    st2 = LayoutStats()
    assert layout_example(tok, d["prompt"], d["action"], 1.0, stats=st2, example_id="x",
                          truncation=Truncation(max_len=max_len, on_overflow="drop")) is None
    assert st2.dropped == 1 and st2.dropped_ids == ["x"] and "dropped 1" in st2.report()
    with pytest.raises(SequenceTooLongError, match="max_len"):
        layout_example(tok, d["prompt"], d["action"], 1.0,
                       truncation=Truncation(max_len=max_len, on_overflow="error"))


@pytest.mark.parametrize("kw", [{"prompt_side": "middle"}, {"on_overflow": "cut"}, {"max_len": 3},
                                {"min_prompt_tokens": -1}])
def test_bad_truncation_config(kw):
    with pytest.raises(ValueError):
        Truncation(**kw)


def test_prompt_tokens_matches_generation_fixture(tok, meta, fixtures_dir):
    ref = np.load(fixtures_dir / "ilql_tiny" / "generation_reference.npz")
    ids = prompt_tokens(tok, meta["generation_prompt"])
    np.testing.assert_array_equal(ids, ref["prompt_tokens"][0])
    short = prompt_tokens(tok, meta["generation_prompt"], max_len=6)
    assert len(short) == 6 and short[0] == tok.bos_id and short[-1] == tok.eos_id
    with pytest.raises(ValueError):
        prompt_tokens(tok, "x", max_len=1)


def test_buckets():
    assert bucket_for(5, (64, 128)) == 64 and bucket_for(65, (128, 64)) == 128
    assert bucket_for(7, None) == 7
    with pytest.raises(ValueError, match="largest bucket"):
        bucket_for(129, (64, 128))
    t = CharTok()
    eps = [layout_example(t, "p" * 70, "r", 0.0)]
    with pytest.raises(ValueError, match="exceed batch_size"):
        collate(eps * 3, t.pad_id, batch_size=2)
    with pytest.raises(ValueError, match="at least one"):
        collate([], t.pad_id)


def test_pairs_share_prompt_and_pad_together(tok):
    st = LayoutStats()
    prompt = "Write a job description for: Thinknum | New York | Backend Engineer"
    c, r = layout_pair(tok, prompt, "Join us.", "We want rockstar ninjas who crush it daily.",
                       truncation=Truncation(max_len=24), stats=st)
    assert c.tokens[: c.action_idxs[0] + 1].tolist() == r.tokens[: r.action_idxs[0] + 1].tolist()
    assert max(c.length, r.length) <= 24
    b = collate_pairs([(c, r)], tok.pad_id, buckets=(32,))
    assert b["chosen_tokens"].shape == b["rejected_tokens"].shape == (1, 32)
    assert b["chosen_response_mask"].sum() == len(tok.encode_text("Join us.")) + 1
    assert {"chosen_attn_mask", "rejected_terminals", "rejected_prompt_mask"} <= set(b)
