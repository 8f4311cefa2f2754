"""Instruct models in the job task: a tokenizer with a chat template renders the job prompt as a
system turn + user turn (the FMs-at-work instruction with the posting), and the episode keeps the
layout contract `<s>{templated prompt}</s>{posting}</a></eod>` with the action span exactly the
posting's ids + `</a>`; decoding stops at the template's end of turn as well as at `</a>`."""
import dataclasses

import jax
import numpy as np
import pytest

from fairjax.data import jobs
from fairjax.data.jobs import JobsDataset, make_example
from fairjax.data.layout import Truncation, layout_pair, prompt_tokens
from fairjax.data.task import JobRewriteTask
from fairjax.errors import ConfigError
from fairjax.generate import GenerationConfig, Policy, generate, generate_texts, left_pad
from fairjax.io.tokenizer import DEFAULT_SYSTEM_TEXT, Tokenizer, _load_hf_tokenizer
from fairjax.models import gpt2

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
POSTING = ("Acme Robotics | Senior Backend Engineer | Berlin | ONSITE\n"
           "We build warehouse robots in Python and Go. You will own our fleet API.")
LITERAL = POSTING + " A literal <|im_end|>, </s> and </a> in a posting stay text."


def _chatml_hf(fixtures_dir):
    hf = _load_hf_tokenizer(fixtures_dir / "tokenizer")
    hf.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    hf.chat_template = CHATML
    return hf


@pytest.fixture(scope="module")
def chat_tok(fixtures_dir):
    return Tokenizer(_chatml_hf(fixtures_dir))


@pytest.fixture(scope="module")
def task():
    return JobRewriteTask(JobsDataset([make_example({"id": "p1", "text": POSTING, "reward": 2.5}),
                                       make_example({"id": "p2", "text": LITERAL, "reward": 1.0})]))


def _hf_rendering_ids(tok, prompt, system=DEFAULT_SYSTEM_TEXT):
    """The oracle: transformers renders the messages and tokenizes them in one pass."""
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    rendered = tok.hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return tok.hf(rendered, add_special_tokens=False)["input_ids"]


def test_template_detected_and_end_of_turn(fixtures_dir, chat_tok):
    assert chat_tok.use_chat_template
    assert chat_tok.end_of_turn_id == chat_tok.token_to_id("<|im_end|>")
    plain = Tokenizer.from_dir(fixtures_dir / "tokenizer")
    assert not plain.use_chat_template and plain.end_of_turn_id is None
    off = Tokenizer(_chatml_hf(fixtures_dir), use_chat_template=False)
    assert not off.use_chat_template and off.end_of_turn_id is None
    assert jobs.SYSTEM_TEXT == DEFAULT_SYSTEM_TEXT == chat_tok.system_text


def test_templated_episode_token_by_token(chat_tok, task):
    tok = chat_tok
    ep = task.episodes(tok)[0]
    ex = task.dataset[0]
    t = ep.tokens.tolist()
    posting_ids = tok.encode_text(ex.response)
    s0 = int(ep.state_idxs[0])
    # <s> {system turn, user turn with the FMs-at-work prompt, assistant header} </s>
    assert t[0] == tok.bos_id and t[s0] == tok.eos_id
    assert t[1:s0] == _hf_rendering_ids(tok, ex.prompt)
    prompt_text = tok.decode(t[1:s0], skip_special_tokens=False)
    assert prompt_text.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM_TEXT}<|im_end|>\n"
                                  "<|im_start|>user\nOriginal job description for reference: '")
    assert prompt_text.endswith("original description.<|im_end|>\n<|im_start|>assistant\n")
    # the action span: exactly the posting's ids, then </a>; then </eod>
    assert (ep.tokens[ep.action_idxs + 1]).tolist() == posting_ids + [tok.eoa_id]
    assert t[s0 + 1:] == posting_ids + [tok.eoa_id, tok.eod_id]
    assert ep.action_idxs.tolist() == list(range(s0, s0 + len(posting_ids) + 1))
    assert ep.state_idxs.tolist() == ep.action_idxs.tolist() + [len(t) - 1]
    assert ep.terminals.tolist() == [0] * len(ep.action_idxs) + [1]
    assert ep.rewards[-1] == pytest.approx(2.5) and not ep.rewards[:-1].any()
    assert ep.response_mask.sum() == len(posting_ids) + 1
    # literal control strings inside a posting stay text: no <|im_end|> / </s> / </a> id in the
    # user turn or the action span (the user turn of the rendering ends with the only <|im_end|>)
    lit = task.episodes(tok)[1]
    s1 = int(lit.state_idxs[0])
    controls = {tok.end_of_turn_id, tok.eos_id, tok.eoa_id}
    assert not controls & set(lit.tokens[lit.action_idxs[:-1] + 1].tolist())
    assert lit.tokens[lit.action_idxs + 1].tolist() == tok.encode_text(LITERAL) + [tok.eoa_id]
    head, body, tail = tok.chat_prompt_parts(task.dataset[1].prompt)
    assert not controls & set(body) and lit.tokens[1:s1].tolist() == head + body + tail
    assert tok.decode(body) == task.dataset[1].prompt
    # generation sees exactly the training prompt
    np.testing.assert_array_equal(task.prompt_ids(tok, 0), ep.tokens[:s0 + 1])
    np.testing.assert_array_equal(prompt_tokens(tok, ex.prompt), ep.tokens[:s0 + 1])


def test_plain_tokenizer_layout_unchanged(fixtures_dir, task):
    tok = Tokenizer.from_dir(fixtures_dir / "tokenizer")
    ep = task.episodes(tok)[0]
    ex = task.dataset[0]
    assert ep.tokens.tolist() == ([tok.bos_id] + tok.encode_text(ex.prompt) + [tok.eos_id]
                                  + tok.encode_text(ex.response) + [tok.eoa_id, tok.eod_id])


def test_truncation_trims_only_the_prompt_body(chat_tok, task):
    tok = chat_tok
    ex = task.dataset[0]
    head, body, tail = tok.chat_prompt_parts(ex.prompt)
    assert body == tok.encode_text(ex.prompt) and head + body + tail == _hf_rendering_ids(tok, ex.prompt)
    posting_ids = tok.encode_text(ex.response)
    keep = 7
    max_len = 1 + len(head) + keep + len(tail) + 1 + len(posting_ids) + 2
    ep = task.episodes(tok, truncation=Truncation(max_len=max_len))[0]
    assert ep.length == max_len and ep.truncated == "prompt"
    assert ep.tokens.tolist() == ([tok.bos_id] + head + body[-keep:] + tail + [tok.eos_id]
                                  + posting_ids + [tok.eoa_id, tok.eod_id])
    # max_prompt_tokens counts the whole templated prompt
    ep2 = task.episodes(tok, truncation=Truncation(max_prompt_tokens=len(head) + len(tail) + keep))[0]
    np.testing.assert_array_equal(ep2.tokens, ep.tokens)
    # generation trims the same way
    p = prompt_tokens(tok, ex.prompt, max_len=len(head) + keep + len(tail) + 2)
    np.testing.assert_array_equal(p, ep.tokens[:int(ep.state_idxs[0]) + 1])
    with pytest.raises(ValueError, match="chat-template tokens"):
        prompt_tokens(tok, ex.prompt, max_len=len(head) + len(tail))
    # a response longer than max_len still ends </a></eod> with the frame intact
    short = task.episodes(tok, truncation=Truncation(max_len=len(head) + len(tail) + 20))[0]
    assert short.tokens[1:1 + len(head)].tolist() == head
    assert short.tokens[-2:].tolist() == [tok.eoa_id, tok.eod_id] and "response" in short.truncated


def test_preference_pair_shares_the_templated_prompt(chat_tok, task):
    tok = chat_tok
    ex = task.dataset[0]
    c, r = layout_pair(tok, ex.prompt, "A fair posting.", "A worse posting, longer than that.")
    s0 = int(c.state_idxs[0])
    assert c.tokens[:s0 + 1].tolist() == r.tokens[:s0 + 1].tolist() == prompt_tokens(tok, ex.prompt).tolist()
    assert c.tokens[c.action_idxs + 1].tolist() == tok.encode_text("A fair posting.") + [tok.eoa_id]


def test_stop_ids_config():
    assert GenerationConfig(stop_ids=[5, 7]).stop_ids == (5, 7)
    with pytest.raises(ConfigError, match="stop_ids"):
        GenerationConfig(stop_ids=(-1,))


def _policy_emitting(token: int, vocab: int):
    """A tiny GPT-2 whose greedy next token is always `token` (ln_f outputs a constant along
    that token's embedding row, the only large row of the tied embedding)."""
    cfg = gpt2.PRESETS["tiny"].replace(vocab_size=vocab)
    params = jax.device_get(gpt2.init_params(cfg, jax.random.PRNGKey(0)))
    wte = np.array(params["wte"]["embedding"])
    wte[token] = 0.0
    wte[token, 0] = 10.0
    params = {**params, "wte": {"embedding": wte},
              "ln_f": {"scale": np.zeros_like(params["ln_f"]["scale"]),
                       "bias": wte[token] / 10.0}}
    return Policy.lm(gpt2.Model(cfg), params)


def test_generation_stops_at_end_of_turn(fixtures_dir, chat_tok, task):
    tok = chat_tok
    eot = tok.end_of_turn_id
    policy = _policy_emitting(eot, len(tok))
    prompt = task.dataset[0].prompt
    cfg = GenerationConfig(max_new_tokens=4, mode="greedy")
    [row] = generate_texts(policy, tok, [prompt], cfg, rng=jax.random.PRNGKey(0), batch_size=1)
    assert row["finished"] and row["tokens"] == [eot] and row["text"] == ""
    # without the template's stop the same policy runs on to max_new_tokens
    off = Tokenizer(_chatml_hf(fixtures_dir), use_chat_template=False)
    [row] = generate_texts(policy, off, [prompt], cfg, rng=jax.random.PRNGKey(0), batch_size=1)
    assert not row["finished"] and row["tokens"] == [eot] * 4
    # and generate() itself stops at cfg.stop_ids (</a> still stops too)
    ids, mask = left_pad([prompt_tokens(tok, prompt, max_len=100)], 100, tok.pad_id)
    out = generate(policy, ids, mask, jax.random.PRNGKey(0),
                   dataclasses.replace(cfg, stop_ids=(eot,)), eoa_id=tok.eoa_id, pad_id=tok.pad_id)
    assert bool(out.finished[0]) and int(out.lengths[0]) == 1
    out = generate(policy, ids, mask, jax.random.PRNGKey(0), cfg, eoa_id=eot, pad_id=tok.pad_id)
    assert bool(out.finished[0]) and int(out.lengths[0]) == 1


def test_tokenizer_dir_round_trip_keeps_template(chat_tok, tmp_path):
    chat_tok.save(tmp_path / "tok")
    again = Tokenizer.from_dir(tmp_path / "tok")
    assert again.use_chat_template and again.end_of_turn_id == chat_tok.end_of_turn_id
    assert again.chat_prompt_parts("x") == chat_tok.chat_prompt_parts("x")
    assert not Tokenizer.from_dir(tmp_path / "tok", chat_template=False).use_chat_template


@pytest.mark.slow
def test_smollm2_tokenizer_layout(task):
    """The packaged SmolLM2-135M-Instruct tokenizer (ChatML, read from its GGUF by transformers):
    the end of turn is `<|im_end|>`, the templated prompt equals transformers' rendering, and the
    action span is the posting + `</a>`."""
    from transformers import AutoTokenizer

    from fairjax.io import presets

    [gguf_file] = presets.source_files(presets.get("smollm2-135m-instruct"))
    hf_tok = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    tok = Tokenizer(hf_tok, source=str(gguf_file))
    assert tok.use_chat_template and tok.end_of_turn_id == hf_tok.convert_tokens_to_ids("<|im_end|>")
    ex = task.dataset[0]
    ep = task.episodes(tok)[0]
    s0 = int(ep.state_idxs[0])
    assert ep.tokens[1:s0].tolist() == _hf_rendering_ids(tok, ex.prompt)
    assert ep.tokens[ep.action_idxs + 1].tolist() == tok.encode_text(ex.response) + [tok.eoa_id]
    assert tok.decode(ep.tokens[1:s0], skip_special_tokens=False).endswith(
        "<|im_end|>\n<|im_start|>assistant\n")
