"""GGUF writers shared by the GGUF tests: random transformers models written as tiny GGUF
files with the `gguf` writer (Q/K permuted as llama.cpp's converter does, GPT-2's Conv1D
weights transposed as it does)."""
from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf import quants  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

def _permute(w, n_head):
    """llama.cpp's converter: rotate-half rows -> interleaved pairs, per head (test-side copy)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _kquant_bytes(shape, qtype, rng):
    """Random K-quant blocks with small f16 scales (gguf's writer cannot quantise K-types)."""
    bs, ts = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = shape
    raw = rng.integers(0, 256, size=(rows, cols // bs, ts), dtype=np.uint8)
    scale_at = {Q.Q4_K: ((0, 2e-4), (2, 1e-4)), Q.Q5_K: ((0, 1e-4), (2, 1e-4)),
                Q.Q6_K: ((208, 2e-5),), Q.Q2_K: ((80, 3e-4), (82, 1e-4))}[qtype]
    for off, val in scale_at:
        raw[..., off:off + 2] = np.frombuffer(np.float16(val).tobytes(), np.uint8)
    return raw.reshape(rows, -1)


def _add(writer, name, arr, qtype, rng):
    arr = np.ascontiguousarray(arr, np.float32)
    if arr.ndim == 1 or qtype == Q.F32:
        writer.add_tensor(name, arr)
    elif qtype == Q.F16:
        writer.add_tensor(name, arr.astype(np.float16))
    elif qtype in (Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q2_K):
        writer.add_tensor(name, _kquant_bytes(arr.shape, qtype, rng), raw_dtype=qtype)
    else:
        writer.add_tensor(name, quants.quantize(arr, qtype), raw_dtype=qtype)


def _tokenizer_kv(w, bpe):
    tokens, merges, types = bpe
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_chat_template(CHATML)


def write_llama_gguf(path, bpe, qtype, tied, heavy=None, arch="llama"):
    """A random HF LlamaForCausalLM written as GGUF; returns the HF model (pre-quantisation)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    V = len(bpe[0])
    cfg = LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=tied)
    model = LlamaForCausalLM(cfg).eval()
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(2)
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_feed_forward_length(256)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(16)
    w.add_vocab_size(V)
    _tokenizer_kv(w, bpe)
    _add(w, "token_embd.weight", sd["model.embed_tokens.weight"], qtype, rng)
    _add(w, "output_norm.weight", sd["model.norm.weight"], qtype, rng)
    if not tied:
        _add(w, "output.weight", sd["lm_head.weight"], qtype, rng)
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(2):
        for hf, gg in names.items():
            arr = sd[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                arr = _permute(arr, 4)
            elif gg == "attn_k":
                arr = _permute(arr, 2)
            h = heavy or {}
            _add(w, f"blk.{i}.{gg}.weight", arr, h.get(f"{i}.{gg}", h.get(gg, qtype)), rng)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


def write_gpt2_gguf(path, bpe, qtype, tied, heavy=None):
    """A random HF GPT2LMHeadModel written as GGUF (Conv1D weights transposed to [out, in])."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    V = len(bpe[0])
    cfg = GPT2Config(vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=1024,
                     tie_word_embeddings=tied)
    model = GPT2LMHeadModel(cfg).eval()
    if not tied:
        with torch.no_grad():
            model.lm_head.weight.copy_(torch.randn_like(model.lm_head.weight) * 0.02)
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_block_count(2)
    w.add_context_length(1024)
    w.add_embedding_length(64)
    w.add_feed_forward_length(256)
    w.add_head_count(4)
    w.add_layer_norm_eps(1e-5)
    _tokenizer_kv(w, bpe)
    _add(w, "token_embd.weight", sd["transformer.wte.weight"], qtype, rng)
    _add(w, "position_embd.weight", sd["transformer.wpe.weight"], Q.F32, rng)
    for p in ("weight", "bias"):
        _add(w, f"output_norm.{p}", sd[f"transformer.ln_f.{p}"], qtype, rng)
    if not tied:
        _add(w, "output.weight", sd["lm_head.weight"], qtype, rng)
    names = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
             "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    for i in range(2):
        for hf, gg in names.items():
            wt = sd[f"transformer.h.{i}.{hf}.weight"]
            if wt.ndim == 2:
                wt = wt.T  # llama.cpp stores GPT-2's Conv1D [in, out] as [out, in]
            _add(w, f"blk.{i}.{gg}.weight", wt, (heavy or {}).get(gg, qtype), rng)
            _add(w, f"blk.{i}.{gg}.bias", sd[f"transformer.h.{i}.{hf}.bias"], Q.F32, rng)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model
