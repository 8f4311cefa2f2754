"""GGUF (llama.cpp's file format) in: `read_gguf(path)` and `load_gguf(path)`.

The file is read with the `gguf` package (`gguf.GGUFReader`) and every tensor is dequantised to
float32 by `gguf.quants.dequantize` (F32, F16, BF16, Q8_0, Q4_0/1, Q5_0/1, the K-quants and
whatever else that function supports); fairjax has no dequantisation code of its own.

What llama.cpp's converter changed, undone here the way transformers' GGUF loader does:
  * shapes are listed in GGML order (fastest axis first); the reader's arrays are already in numpy
    order ([rows, row length]), i.e. torch `nn.Linear` `[out, in]` for llama;
  * llama: the rows of Q and K (weights and biases) are permuted per head from HF's rotate-half
    layout to interleaved pairs; `_unpermute_rows` puts them back (with `head_count_kv` for K);
  * gpt2: the Conv1D weights (`attn_qkv`, `attn_output`, `ffn_up`, `ffn_down`) were transposed
    to `[out, in]`; they are transposed back to HF's `[in, out]`;
  * no `output.weight` tensor = tied embeddings (`tie_word_embeddings=True`).
Hyper-parameters come from the `{arch}.*` metadata keys (`_CONFIG_KEYS`); the vocabulary size
from `{arch}.vocab_size`, else the tokenizer's token count. The tokenizer (vocabulary, merges,
special tokens, `tokenizer.chat_template`) is rebuilt from the `tokenizer.*` metadata with
transformers' GGUF tokenizer converter (`transformers.integrations.gguf.gguf_tokenizer_mapping`,
no torch needed) and wrapped as a fairjax `Tokenizer`.

Errors (a truncated or corrupt file, an architecture other than llama/gpt2, a tensor type
`gguf.quants` cannot dequantise, a tensor of the wrong shape, a missing metadata key) are one-line
`ConfigError`s naming the file and the tensor or key.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fairjax.errors import ConfigError
from fairjax.io.tokenizer import Tokenizer, assert_vocab_matches, resize_embeddings
from fairjax.models import model_module

ARCHITECTURES = ("llama", "gpt2")
MAGIC = b"GGUF"

# {arch}.<key> -> HF config.json key
_CONFIG_KEYS = {
    "llama": {
        "context_length": "max_position_embeddings", "block_count": "num_hidden_layers",
        "feed_forward_length": "intermediate_size", "embedding_length": "hidden_size",
        "rope.dimension_count": "head_dim", "rope.freq_base": "rope_theta",
        "attention.head_count": "num_attention_heads",
        "attention.head_count_kv": "num_key_value_heads",
        "attention.layer_norm_rms_epsilon": "rms_norm_eps", "vocab_size": "vocab_size",
    },
    "gpt2": {
        "context_length": "n_positions", "block_count": "n_layer", "embedding_length": "n_embd",
        "feed_forward_length": "n_inner", "attention.head_count": "n_head",
        "attention.layer_norm_epsilon": "layer_norm_epsilon", "vocab_size": "vocab_size",
    },
}
_REQUIRED = {"llama": ("block_count", "embedding_length", "feed_forward_length",
                       "attention.head_count"),
             "gpt2": ("block_count", "embedding_length", "attention.head_count")}

# GGUF tensor name (blk.N. stripped) -> HF name (model.layers.N. / transformer.h.N. prefixed)
_LLAMA_TENSORS = {
    "token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
}
_LLAMA_BLOCK = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GPT2_TENSORS = {
    "token_embd": "transformer.wte", "position_embd": "transformer.wpe",
    "output_norm": "transformer.ln_f", "output": "lm_head",
}
_GPT2_BLOCK = {
    "attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj",
    "ffn_norm": "ln_2", "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj",
}
_GPT2_TRANSPOSED = ("attn_qkv", "attn_output", "ffn_up", "ffn_down")


class GGUFContents(NamedTuple):
    """What a GGUF file holds, in Hugging Face terms."""

    architecture: str
    config: dict  # HF config.json dict
    state_dict: dict  # HF key -> float32 numpy array
    metadata: dict  # GGUF key -> python value (token lists included)
    tensor_types: dict  # GGUF tensor name -> type name (e.g. "Q4_1")


def is_gguf(path: str | os.PathLike) -> bool:
    """True for a file that starts with the GGUF magic."""
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(4) == MAGIC


def _reader(path: Path):
    try:
        import gguf
    except ImportError:
        raise ConfigError(f"{path}: reading GGUF needs the `gguf` package; run: "
                          "pip install gguf==0.19.0") from None
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != MAGIC:
        raise ConfigError(f"{path}: not a GGUF file (starts with {head!r}, expected {MAGIC!r})")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001  (truncated tables/data: ValueError, IndexError, ...)
        raise ConfigError(f"{path}: truncated or corrupt GGUF file ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else 'unreadable'})") from None


def _metadata(reader, path: Path) -> dict:
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            out[key] = field.contents()
        except Exception as e:  # noqa: BLE001  (any decoding failure -> one line naming the key)
            raise ConfigError(f"{path}: metadata key {key!r} is unreadable "
                              f"({type(e).__name__}: {e})") from None
    return out


def _dequantize(tensor, path: Path) -> np.ndarray:
    from gguf import quants

    name, qtype = tensor.name, tensor.tensor_type
    try:
        arr = quants.dequantize(tensor.data, qtype)
    except NotImplementedError:
        raise ConfigError(f"{path}: tensor {name!r} has type {qtype.name}, which gguf.quants "
                          "cannot dequantise (unsupported quantisation type)") from None
    except Exception as e:  # noqa: BLE001  (short/misshapen data -> one line naming the tensor)
        raise ConfigError(f"{path}: tensor {name!r} ({qtype.name}) is truncated or corrupt "
                          f"({type(e).__name__}: {e})") from None
    want = tuple(int(d) for d in reversed(list(tensor.shape)))  # GGML order -> numpy order
    if arr.size != int(np.prod(want)):
        raise ConfigError(f"{path}: tensor {name!r} holds {arr.size} values, its header says "
                          f"shape {want} (GGML order reversed)")
    return np.ascontiguousarray(arr.reshape(want), dtype=np.float32)


def _unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's Q/K permutation: within each head the rows were reordered from
    [first half, second half] (HF rotate-half) to interleaved pairs; put them back.
    w: [n_head * head_dim, ...] (a weight [out, in] or a bias [out])."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_config(arch: str, meta: dict, names: set, path: Path) -> dict:
    keys = _CONFIG_KEYS[arch]
    missing = [f"{arch}.{k}" for k in _REQUIRED[arch] if f"{arch}.{k}" not in meta]
    if missing:
        raise ConfigError(f"{path}: metadata key {missing[0]!r} is missing")
    cfg: dict[str, Any] = {"model_type": arch}
    for k, hf in keys.items():
        if f"{arch}.{k}" in meta:
            cfg[hf] = meta[f"{arch}.{k}"]
    if "vocab_size" not in cfg:
        tokens = meta.get("tokenizer.ggml.tokens")
        if tokens is None:
            raise ConfigError(f"{path}: neither {arch}.vocab_size nor tokenizer.ggml.tokens "
                              "gives the vocabulary size")
        cfg["vocab_size"] = len(tokens)
    cfg["tie_word_embeddings"] = "output.weight" not in names
    for hf, key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                    ("pad_token_id", "padding_token_id")):
        if f"tokenizer.ggml.{key}" in meta:
            cfg[hf] = int(meta[f"tokenizer.ggml.{key}"])
    if arch == "llama":
        scaling = meta.get("llama.rope.scaling.type")
        if scaling not in (None, "none"):
            if scaling != "linear" or "llama.rope.scaling.factor" not in meta:
                raise ConfigError(f"{path}: metadata key 'llama.rope.scaling.type' = {scaling!r} "
                                  "is not supported (only 'none' and 'linear')")
            cfg["rope_parameters"] = {"rope_type": "linear",
                                      "factor": float(meta["llama.rope.scaling.factor"]),
                                      "rope_theta": float(cfg.get("rope_theta", 10000.0))}
        if "rope_freqs.weight" in names:
            raise ConfigError(f"{path}: tensor 'rope_freqs.weight' (per-frequency RoPE factors, "
                              "Llama 3.1 style) is not supported")
        if "head_dim" in cfg and cfg["head_dim"] * cfg["num_attention_heads"] == cfg["hidden_size"]:
            del cfg["head_dim"]  # the default; keeps the config like HF's own
        cfg["attention_bias"] = any(n.endswith("attn_q.bias") for n in names)
    else:
        cfg["activation_function"] = "gelu_new"
    return cfg


def _hf_name(arch: str, name: str) -> tuple[str, str] | None:
    """(HF key, GGUF base name without blk.N.) of a GGUF tensor name, or None if unknown."""
    stem, _, suffix = name.rpartition(".")
    top, block = (_LLAMA_TENSORS, _LLAMA_BLOCK) if arch == "llama" else (_GPT2_TENSORS, _GPT2_BLOCK)
    if stem in top:
        return f"{top[stem]}.{suffix}", stem
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in block:
        pre = "model.layers" if arch == "llama" else "transformer.h"
        return f"{pre}.{parts[1]}.{block[parts[2]]}.{suffix}", parts[2]
    return None


def read_gguf(path: str | os.PathLike, progress: bool = False) -> GGUFContents:
    """Metadata, HF config dict and float32 HF-named state dict of a llama / gpt2 GGUF file."""
    path = Path(path).expanduser()
    reader = _reader(path)
    meta = _metadata(reader, path)
    arch = meta.get("general.architecture")
    if arch is None:
        raise ConfigError(f"{path}: metadata key 'general.architecture' is missing")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"{path}: metadata key 'general.architecture' = {arch!r} is not "
                          f"supported (fairjax reads {', '.join(ARCHITECTURES)})")
    names = {t.name for t in reader.tensors}
    cfg = _hf_config(arch, meta, names, path)
    tensors = reader.tensors
    if progress:
        from tqdm import tqdm

        tensors = tqdm(tensors, desc=f"dequantising {path.name}", unit="tensor", leave=False)
    sd, types = {}, {}
    for t in tensors:
        mapped = _hf_name(arch, t.name)
        if mapped is None:
            raise ConfigError(f"{path}: tensor {t.name!r} is not part of a {arch} model")
        key, base = mapped
        w = _dequantize(t, path)
        if arch == "llama" and base == "attn_q":
            w = _unpermute_rows(w, int(cfg["num_attention_heads"]))
        elif arch == "llama" and base == "attn_k":
            w = _unpermute_rows(w, int(cfg.get("num_key_value_heads",
                                               cfg["num_attention_heads"])))
        elif arch == "gpt2" and base in _GPT2_TRANSPOSED and t.name.endswith(".weight"):
            w = np.ascontiguousarray(w.T)
        sd[key] = w
        types[t.name] = t.tensor_type.name
    return GGUFContents(arch, cfg, sd, meta, types)


def hf_tokenizer(meta: dict, path: str | os.PathLike = "<gguf>"):
    """A transformers fast tokenizer rebuilt from the `tokenizer.*` metadata (vocabulary,
    merges, control tokens, bos/eos/unk/pad, chat template) by transformers' GGUF converter."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    if "tokenizer.ggml.tokens" not in meta:
        raise ConfigError(f"{path}: metadata key 'tokenizer.ggml.tokens' is missing (no tokenizer)")
    tok_dict = {name: meta[f"tokenizer.{key}"]
                for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
                if f"tokenizer.{key}" in meta}
    try:
        backend, _ = convert_gguf_tokenizer(meta.get("general.architecture"), tok_dict)
    except Exception as e:  # noqa: BLE001  (converter errors -> one line naming the key)
        raise ConfigError(f"{path}: metadata key 'tokenizer.ggml.model' = "
                          f"{tok_dict.get('tokenizer_type')!r}: cannot build the tokenizer "
                          f"({type(e).__name__}: {e})") from None
    tokens = tok_dict["tokens"]
    kwargs: dict[str, Any] = {}
    for role, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        i = meta.get(f"tokenizer.ggml.{key}")
        if i is not None and 0 <= int(i) < len(tokens):
            kwargs[role] = tokens[int(i)]
    if meta.get("tokenizer.chat_template"):
        kwargs["chat_template"] = meta["tokenizer.chat_template"]
    return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)


def load_gguf(path: str | os.PathLike, *, dtype: str | None = None,
              chat_template: bool = False, progress: bool = False):
    """(fairjax config, float32 params, fairjax Tokenizer) of a GGUF file. The tokenizer gains the
    six layout tokens and the embedding (the tied head with it) gets their rows (mean init)."""
    path = Path(path).expanduser()
    contents = read_gguf(path, progress=progress)
    module = model_module(contents.architecture)
    try:
        config = module.Config.from_hf(contents.config, **({"dtype": dtype} if dtype else {}))
    except (ConfigError, TypeError, ValueError) as e:
        raise ConfigError(f"{path}: metadata gives an invalid {contents.architecture} config: {e}"
                          ) from None
    params = module.params_from_hf(contents.state_dict, config, source=str(path))
    hf_tok = hf_tokenizer(contents.metadata, path)
    tokenizer = Tokenizer(hf_tok, use_chat_template=chat_template, source=str(path))
    n_base = len(tokenizer) - len(tokenizer.added_tokens)
    if tokenizer.added_tokens and config.vocab_size == n_base:
        params, config = resize_embeddings(params, config, len(tokenizer))
    assert_vocab_matches(tokenizer, config, allow_padding=True)
    return config, params, tokenizer


__all__ = ["ARCHITECTURES", "GGUFContents", "hf_tokenizer", "is_gguf", "load_gguf", "read_gguf"]
