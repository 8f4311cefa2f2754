"""PHF dataset transforms: per-token scores, filtering, conditional-training tokens, chunking,
control tokens in the tokenizer and the embedding resize."""
import numpy as np
import pytest

from fairjax.data import phf_transforms as pt

EOS = 99


def encode(text):  # one id per character, enough to count tokens
    return [ord(c) % 90 for c in text]


DOCS = [
    {"texts": ["ab", "cde"], "scores": [0.0, 0.5], "avg_score": 0.25},
    {"texts": ["fg"], "scores": [0.1]},  # avg_score missing -> mean of scores
    {"texts": ["hij", "k"], "scores": [0.9, 0.7], "avg_score": 0.8},
]


def test_token_scores_and_document_tokens():
    np.testing.assert_array_equal(pt.token_scores_from_sentences([[1, 2], [3, 4, 5]], [0.0, 0.5]),
                                  [0, 0, 0.5, 0.5, 0.5])
    ids, sc = pt.document_tokens(DOCS[0]["texts"], DOCS[0]["scores"], encode, EOS)
    np.testing.assert_array_equal(ids, [EOS] + encode("ab") + encode("cde"))
    np.testing.assert_allclose(sc, [0.0, 0.0, 0.0, 0.5, 0.5, 0.5])  # EOS carries sentence 0's score


def test_filtering():
    kept = list(pt.filter_documents(DOCS, threshold=0.25))
    assert [d["texts"][0] for d in kept] == ["ab", "fg"]  # <= threshold, doc-level mean score
    with pytest.raises(KeyError, match="avg_score"):
        list(pt.filter_documents([{"texts": ["x"]}], 0.1))


def test_conditional_tokens():
    cond = pt.ConditionalConfig(aligned_id=1, misaligned_id=2, threshold=0.25)
    ids, sc = pt.document_tokens(DOCS[0]["texts"], DOCS[0]["scores"], encode, EOS, cond,
                                 np.random.default_rng(0))
    np.testing.assert_array_equal(ids, [EOS, 1] + encode("ab") + [2] + encode("cde"))
    np.testing.assert_allclose(sc, [0.0] * 4 + [0.5] * 4)
    # drop_token_fraction: the control token is omitted with that probability
    cond = pt.ConditionalConfig(1, 2, threshold=0.25, drop_token_fraction=0.3)
    rng = np.random.default_rng(0)
    n_ctrl = sum(int(np.isin(pt.document_tokens(["a"], [0.0], encode, EOS, cond, rng)[0], [1, 2]).sum())
                 for _ in range(4000))
    assert abs(n_ctrl / 4000 - 0.7) < 0.03
    with pytest.raises(ValueError, match="drop_token_fraction"):
        pt.ConditionalConfig(1, 2, 0.0, drop_token_fraction=1.5)


def test_constant_length_chunks():
    chunks = list(pt.constant_length_chunks(DOCS, encode, EOS, seq_length=4))
    stream = np.concatenate([pt.document_tokens(d["texts"], d["scores"], encode, EOS)[0] for d in DOCS])
    assert len(chunks) == stream.size // 4  # partial tail dropped
    np.testing.assert_array_equal(np.concatenate([c["tokens"] for c in chunks]),
                                  stream[: len(chunks) * 4])
    assert all(c["tokens"].shape == (4,) and c["token_scores"].shape == (4,) for c in chunks)
    filtered = list(pt.constant_length_chunks(DOCS, encode, EOS, seq_length=3, filter_threshold=0.25))
    assert sum(c["tokens"].size for c in filtered) == 9  # (1+2+3) + (1+2) tokens of docs 0 and 1


def test_control_tokens_in_tokenizer_and_resize(fixtures_dir):
    from fairjax.io.tokenizer import Tokenizer
    from fairjax.io import hf

    tok = Tokenizer.from_dir(fixtures_dir / "gpt2_tiny" / "hf")
    n = len(tok)
    aligned, misaligned = pt.add_control_tokens(tok)
    assert (aligned, misaligned) == (n, n + 1) and len(tok) == n + 2
    assert pt.add_control_tokens(tok) == (aligned, misaligned)  # idempotent
    assert pt.control_token_ids(tok) == [aligned, misaligned]
    assert tok.decode([aligned], skip_special_tokens=False) == pt.ALIGNED
    # user text containing the literal control string stays text
    assert aligned not in tok.encode_text("x <|aligned|> y")
    config, params = hf.load_hf_dir(fixtures_dir / "gpt2_tiny" / "hf")
    new, new_cfg = pt.resize_for_control_tokens(params, config, len(tok), seed=0)
    old_emb = np.asarray(params["wte"]["embedding"])
    emb = np.asarray(new["wte"]["embedding"])
    assert new_cfg.vocab_size == len(tok) and emb.shape == (len(tok), old_emb.shape[1])
    np.testing.assert_array_equal(emb[: old_emb.shape[0]], old_emb)
    dev = emb[old_emb.shape[0]:] - old_emb.mean(0)
    assert 0.003 < dev.std() < 0.03  # mean + 0.01·N(0, 1)
