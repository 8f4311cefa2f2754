"""Tokenizer wrapper: layout token ids, literal control strings stay text, save/load, chat template."""
import json

import numpy as np
import pytest

from fairjax.io.tokenizer import (LAYOUT_TOKENS, Tokenizer, VocabMismatchError,
                                    assert_vocab_matches, resize_embeddings)


def _expected_ids(fixtures_dir):
    return json.loads((fixtures_dir / "gpt2_tiny" / "meta.json").read_text())["special_token_ids"]


def test_layout_tokens_added_in_upstream_order(fixtures_dir):
    expected = _expected_ids(fixtures_dir)
    base = Tokenizer.from_dir(fixtures_dir / "tokenizer")
    ready = Tokenizer.from_dir(fixtures_dir / "gpt2_tiny" / "hf")
    assert base.added_tokens == list(LAYOUT_TOKENS)  # base has none of them
    assert ready.added_tokens == []                   # hf/ already has all of them
    for tok in (base, ready):
        assert tok.special_ids == expected
        assert (tok.eoa_id, tok.boa_id, tok.eod_id, tok.bos_id, tok.eos_id, tok.pad_id) == tuple(
            expected[t] for t in LAYOUT_TOKENS)
        assert len(tok) == max(expected.values()) + 1
    # ILQL's eos is `</s>`, not HF's eos_token (<|endoftext|>)
    assert ready.eos_id != ready.hf.eos_token_id


def test_same_ids_as_fixture_tokenizer(fixtures_dir, shared_data_dir):
    base = Tokenizer.from_dir(fixtures_dir / "tokenizer")
    ready = Tokenizer.from_dir(fixtures_dir / "gpt2_tiny" / "hf")
    texts = [json.loads(l)["text"] for l in
             (shared_data_dir / "hn_jobs" / "train.jsonl").read_text().splitlines()[:20]]
    assert base.encode_texts(texts) == ready.encode_texts(texts)
    for t in texts[:5]:
        assert ready.decode(ready.encode_text(t)) == t


@pytest.mark.parametrize("text", [
    "We use <a href='https://x.io'>React</a> and </s> tags",
    "<s>literal</s> then </eod> and <|pad|> and <|endoftext|>",
])
def test_literal_control_strings_stay_text(fixtures_dir, text):
    tok = Tokenizer.from_dir(fixtures_dir / "gpt2_tiny" / "hf")
    ids = tok.encode_text(text)
    control = set(tok.special_ids.values()) | set(tok.hf.all_special_ids)
    assert not control & set(ids), f"control ids {control & set(ids)} in user text"
    assert tok.decode(ids) == text
    # whereas the plain HF call (special parsing on, as upstream) produces control ids
    assert control & set(tok.hf(text, add_special_tokens=False)["input_ids"])
    assert tok.encode_texts([text, "x"])[0] == ids


def test_decode_skips_layout_tokens(fixtures_dir):
    tok = Tokenizer.from_dir(fixtures_dir / "gpt2_tiny" / "hf")
    body = tok.encode_text("Join us!")
    ids = [tok.bos_id] + body + [tok.eoa_id, tok.eod_id, tok.pad_id]
    assert tok.decode(ids) == "Join us!"
    assert tok.decode(ids, skip_special_tokens=False) == "<s>Join us!</a></eod><|pad|>"


def test_save_roundtrip(fixtures_dir, tmp_path):
    tok = Tokenizer.from_dir(fixtures_dir / "tokenizer")
    tok.save(tmp_path / "tok")
    again = Tokenizer.from_dir(tmp_path / "tok")
    assert again.added_tokens == [] and again.special_ids == tok.special_ids
    assert len(again) == len(tok)
    text = "Senior Backend Engineer </a> | Remote"
    assert again.encode_text(text) == tok.encode_text(text)


def test_chat_template_keeps_user_text_literal(fixtures_dir):
    tok = Tokenizer.from_dir(fixtures_dir / "gpt2_tiny" / "hf")
    assert tok.apply_chat_template("hello") == tok.encode_text("hello")
    with pytest.raises(ValueError, match="chat template"):
        Tokenizer.from_dir(fixtures_dir / "gpt2_tiny" / "hf", chat_template=True)
    tok.hf.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>"
                            "{% endfor %}{% if add_generation_prompt %}<s>assistant: {% endif %}")
    chat = Tokenizer(tok.hf, use_chat_template=True)
    ids = chat.apply_chat_template("write </s> a job ad", system="be fair")
    expected = ([chat.bos_id] + chat.encode_text("system: be fair") + [chat.eos_id, chat.bos_id]
                + chat.encode_text("user: write </s> a job ad") + [chat.eos_id, chat.bos_id]
                + chat.encode_text("assistant: "))
    assert ids == expected
    # without control strings in the content it equals a single-pass encoding of the rendering
    msgs = [{"role": "system", "content": "be fair"}, {"role": "user", "content": "write a job ad"}]
    rendered = chat.hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert chat.apply_chat_template("write a job ad", system="be fair") == chat.hf(
        rendered, add_special_tokens=False)["input_ids"]


class _Cfg:
    def __init__(self, kind, vocab_size):
        self.kind, self.vocab_size = kind, vocab_size


def test_assert_vocab_matches(fixtures_dir):
    tok = Tokenizer.from_dir(fixtures_dir / "tokenizer")
    assert_vocab_matches(tok, _Cfg("gpt2", len(tok)))
    with pytest.raises(VocabMismatchError, match=f"vocab_size={len(tok) - 6}.*resize_embeddings"):
        assert_vocab_matches(tok, _Cfg("gpt2", len(tok) - 6))
    with pytest.raises(VocabMismatchError):
        assert_vocab_matches(tok, _Cfg("gpt2", len(tok) + 2))
    assert_vocab_matches(tok, _Cfg("gpt2", len(tok) + 2), allow_padding=True)


def test_resize_embeddings_mean_and_normal():
    import dataclasses
    import jax

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        kind: str
        vocab_size: int

    rng = np.random.default_rng(0)
    wte = rng.normal(size=(10, 4)).astype(np.float32)
    head = rng.normal(size=(4, 10)).astype(np.float32)
    params = {"embed_tokens": {"embedding": wte}, "lm_head": {"kernel": head}, "norm": {"weight": 1}}
    new, cfg = resize_embeddings(params, Cfg("llama", 10), 13)
    assert cfg.vocab_size == 13 and params["embed_tokens"]["embedding"].shape == (10, 4)
    np.testing.assert_array_equal(new["embed_tokens"]["embedding"][:10], wte)
    np.testing.assert_allclose(new["embed_tokens"]["embedding"][12], wte.mean(0), rtol=1e-6)
    np.testing.assert_allclose(new["lm_head"]["kernel"][:, 11], head.mean(1), rtol=1e-6)
    new2, _ = resize_embeddings({"wte": {"embedding": wte}}, Cfg("gpt2", 10), 12,
                                rng=jax.random.PRNGKey(0), method="normal")
    extra = new2["wte"]["embedding"][10:]
    assert extra.shape == (2, 4) and 0 < np.abs(extra).max() < 0.2
    with pytest.raises(ValueError, match="shrink"):
        resize_embeddings(params, Cfg("llama", 10), 8)
    with pytest.raises(ValueError, match="expected 11"):
        resize_embeddings(params, Cfg("llama", 11), 12)
