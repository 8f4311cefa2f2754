"""GGUF in (fairjax.io.gguf): tiny GGUF files written here with the `gguf` writer from random
transformers models (Q/K permuted as llama.cpp's converter does, GPT-2's Conv1D weights
transposed as it does), several quantisation types, tied and untied heads; the oracle is
transformers' own `from_pretrained(dir, gguf_file=...)` (torch, test-only). The packaged
SmolLM2 GGUF (preset) is compared the same way in a slow test."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gguf import GGMLQuantizationType as Q

from fairjax.errors import ConfigError
from fairjax.io import gguf as fg
from gguf_helpers import (CHATML, SPECIALS, _tokenizer_kv, write_gpt2_gguf,
                          write_llama_gguf)

TEXT = "We are hiring a senior engineer in Berlin; apply with your CV, remote friendly."
CORPUS = [TEXT, "The quick brown fox jumps over the lazy dog.", "Engineers write code daily.",
          "Join our team: salaries, benefits, flexible hours and a friendly office."] * 4


@pytest.fixture(scope="module")
def bpe():
    """(tokens in id order, merges, token types) of a tiny byte-level BPE trained here."""
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(CORPUS, vocab_size=320, min_frequency=1, special_tokens=SPECIALS,
                            show_progress=False)
    model = json.loads(tok._tokenizer.to_str())["model"]
    vocab = model["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [3 if t in SPECIALS else 1 for t in tokens]
    return tokens, merges, types


def _oracle(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model, tok


def _compare(path, tie):
    from fairjax.runs import load

    ref_model, ref_tok = _oracle(path)
    model, params, tok = load(str(path))
    assert model.config.tie_word_embeddings is tie
    assert ref_model.config.tie_word_embeddings is tie
    ids = tok.encode_text(TEXT)
    assert ids == ref_tok(TEXT, add_special_tokens=False)["input_ids"]
    msgs = [{"role": "user", "content": "hello"}]
    assert tok.hf.apply_chat_template(msgs, tokenize=False) == \
        ref_tok.apply_chat_template(msgs, tokenize=False)
    x = np.array([ids])
    with torch.no_grad():
        ref = ref_model(torch.tensor(x)).logits.numpy()
    out = np.asarray(model.apply({"params": params}, x).logits)
    assert out.shape[-1] == len(tok) == ref.shape[-1] + 6  # the six layout tokens
    np.testing.assert_allclose(out[..., :ref.shape[-1]], ref, atol=1e-4, rtol=0)
    return model, params, tok


LLAMA_CASES = [
    ("F32", Q.F32, False, None), ("F16", Q.F16, True, None), ("BF16", Q.BF16, False, None),
    ("Q8_0", Q.Q8_0, True, None), ("Q4_0", Q.Q4_0, False, None), ("Q4_1", Q.Q4_1, True, None),
    ("Q5_0", Q.Q5_0, True, None), ("Q5_1", Q.Q5_1, False, None),
    ("Q4_K", Q.Q8_0, True, {"ffn_down": Q.Q4_K, "attn_q": Q.F32}),
]


@pytest.mark.parametrize("label,qtype,tied,heavy", LLAMA_CASES, ids=[c[0] for c in LLAMA_CASES])
def test_llama_gguf_equals_transformers(tmp_path, bpe, label, qtype, tied, heavy):
    path = tmp_path / "tiny-llama.gguf"
    hf = write_llama_gguf(path, bpe, qtype, tied, heavy)
    model, params, _ = _compare(path, tied)
    c = model.config
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.intermediate_size) == \
        (2, 64, 4, 2, 256)
    if qtype == Q.F32:  # lossless: the un-permuted Q/K equal the original HF weights exactly
        for i in range(2):
            for n in ("q_proj", "k_proj"):
                np.testing.assert_array_equal(
                    params[f"layers_{i}"]["self_attn"][n]["kernel"],
                    hf.state_dict()[f"model.layers.{i}.self_attn.{n}.weight"].numpy().T)


def test_llama_kquant_types_dequantised_by_gguf(tmp_path, bpe):
    path = tmp_path / "k.gguf"
    write_llama_gguf(path, bpe, Q.Q8_0, True, {"0.ffn_down": Q.Q6_K, "1.ffn_down": Q.Q5_K})
    contents = fg.read_gguf(path)
    assert [contents.tensor_types[f"blk.{i}.ffn_down.weight"] for i in (0, 1)] == ["Q6_K", "Q5_K"]
    _compare(path, True)


GPT2_CASES = [("F32-tied", Q.F32, True, None), ("Q8_0-untied", Q.Q8_0, False, None),
              ("Q4_1-tied", Q.Q4_1, True, None), ("Q5_0-untied", Q.Q5_0, False, None),
              ("Q4_0+Q2_K", Q.Q4_0, True, {"ffn_down": Q.Q2_K})]


@pytest.mark.parametrize("label,qtype,tied,heavy", GPT2_CASES, ids=[c[0] for c in GPT2_CASES])
def test_gpt2_gguf_equals_transformers(tmp_path, bpe, label, qtype, tied, heavy):
    path = tmp_path / "tiny-gpt2.gguf"
    hf = write_gpt2_gguf(path, bpe, qtype, tied, heavy)
    _, params, _ = _compare(path, tied)
    if qtype == Q.F32:  # Conv1D weights transposed back to HF's [in, out]
        np.testing.assert_array_equal(params["h_0"]["attn"]["c_attn"]["kernel"],
                                      hf.state_dict()["transformer.h.0.attn.c_attn.weight"].numpy())


def test_convert_cli_writes_model_dir(tmp_path, bpe):
    from fairjax.convert import convert
    from fairjax.io.checkpoint import load_model_dir

    path = tmp_path / "m.gguf"
    write_llama_gguf(path, bpe, Q.Q8_0, True)
    out = convert(str(path), str(tmp_path / "out"))
    config, params, tok = load_model_dir(out)
    _, p2, t2 = fg.load_gguf(path)
    assert config.tie_word_embeddings and "lm_head" not in params
    assert len(tok) == len(t2) and tok.hf.chat_template == CHATML
    np.testing.assert_array_equal(params["embed_tokens"]["embedding"], p2["embed_tokens"]["embedding"])


# ----------------------------------------------------------------------------- errors
def test_truncated_file_one_line_error(tmp_path, bpe):
    path = tmp_path / "t.gguf"
    write_llama_gguf(path, bpe, Q.Q8_0, True)
    data = path.read_bytes()
    for cut in (len(data) - 1000, 64):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(ConfigError) as e:
            fg.read_gguf(bad)
        msg = str(e.value)
        assert str(bad) in msg and "\n" not in msg


def test_not_gguf(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(ConfigError, match="not a GGUF file"):
        fg.read_gguf(bad)


def test_unsupported_architecture(tmp_path, bpe):
    path = tmp_path / "a.gguf"
    write_llama_gguf(path, bpe, Q.F32, True, arch="mamba")
    with pytest.raises(ConfigError, match=r"general\.architecture.*'mamba'") as e:
        fg.read_gguf(path)
    assert str(path) in str(e.value)


def test_unsupported_quant_type_names_tensor(tmp_path, bpe):
    path = tmp_path / "q.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for k, v in (("block_count", 1), ("embedding_length", 64), ("feed_forward_length", 256),
                 ("head_count", 4)):
        getattr(w, f"add_{k}")(v)
    _tokenizer_kv(w, bpe)
    bs, ts = gguf.GGML_QUANT_SIZES[Q.Q8_1]
    w.add_tensor("token_embd.weight", np.zeros((len(bpe[0]), 64 // bs * ts), np.uint8),
                 raw_dtype=Q.Q8_1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ConfigError, match=r"'token_embd\.weight'.*Q8_1") as e:
        fg.read_gguf(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- SmolLM2 (slow)
@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("fairjax_cache")


@pytest.mark.slow
def test_smollm2_preset_equals_transformers_gguf(shared_cache, monkeypatch):
    from fairjax.io import presets
    from fairjax.runs import load

    monkeypatch.setenv("FAIRJAX_CACHE", str(shared_cache))
    try:
        src = presets.source_files(presets.get("smollm2-135m-instruct"))[0]
    except presets.PresetError as e:
        if os.environ.get("CI"):  # CI installs every preset package: absence is a failure
            pytest.fail(str(e))
        pytest.skip(str(e))
    model, params, tok = load("smollm2-135m-instruct")
    assert (presets.entry_dir(presets.get("smollm2-135m-instruct")) / presets.COMPLETE).is_file()
    c = model.config
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.tie_word_embeddings,
            c.rope_theta) == (30, 576, 9, 3, True, 1e5)
    assert "lm_head" not in params
    ref_model, ref_tok = _oracle(src)
    ids = tok.encode_text(TEXT)
    assert ids == ref_tok(TEXT, add_special_tokens=False)["input_ids"]
    msgs = [{"role": "user", "content": "Rewrite this job posting."}]
    assert tok.hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        ref_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    x = np.array([ids])
    with torch.no_grad():
        ref = ref_model(torch.tensor(x)).logits.numpy()
    out = np.asarray(model.apply({"params": params}, x).logits)[..., :ref.shape[-1]]
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
    if os.environ.get("FAIRJAX_CACHE"):
        # reused: a second load does not convert again (the entry's files are untouched)
        stamp = (presets.entry_dir(presets.get("smollm2-135m-instruct")) / "fairjax_model.json"
                 ).stat().st_mtime_ns
        load("smollm2-135m-instruct")
        assert (presets.entry_dir(presets.get("smollm2-135m-instruct")) /
                "fairjax_model.json").stat().st_mtime_ns == stamp
