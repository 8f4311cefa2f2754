"""Hugging Face directories <-> numpy state dicts and model configs (torch-free).

Reading: `model.safetensors`, sharded `model.safetensors.index.json`, or `pytorch_model.bin`
(through the restricted unpickler in `fairjax.io.torch_pickle`). Safetensors files are parsed
here directly (8-byte header length + JSON header + raw little-endian data) so bfloat16 works
without torch. Writing: `write_hf_dir` emits config.json, generation_config.json,
model.safetensors (sharded with an index above `shard_size_bytes`) and tokenizer files.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Mapping, Optional

import ml_dtypes
import numpy as np

from fairjax.errors import CheckpointMismatchError, ConfigError
from fairjax.io import torch_pickle
from fairjax.models import model_module as lookup

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"

_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}


# --------------------------------------------------------------------------- safetensors
def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of one .safetensors file as numpy arrays (native dtype, copied)."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: too short to be a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: bad safetensors header ({e})") from e
        data = f.read()
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ValueError(f"{path}: tensor {key!r} has unsupported dtype {info.get('dtype')!r}")
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        arr = np.frombuffer(data[start:end], dtype=np.dtype(dtype).newbyteorder("<"))
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise ValueError(f"{path}: tensor {key!r} has {arr.size} values for shape {list(shape)}")
        out[key] = arr.reshape(shape).astype(dtype, copy=True)
    return out


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write `tensors` (sorted by key, as safetensors does) to `path`."""
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset, blobs = 0, []
    for key in sorted(tensors):
        arr = np.ascontiguousarray(tensors[key])
        name = _ST_NAMES.get(arr.dtype)
        if name is None:
            raise ValueError(f"cannot write {key!r}: dtype {arr.dtype} is not supported by safetensors")
        blob = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[key] = {"dtype": name, "shape": list(arr.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)  # align data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for blob in blobs:
            f.write(blob)


# --------------------------------------------------------------------------- reading dirs
def _read_index(index_path: Path, reader) -> dict[str, np.ndarray]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{index_path}: expected JSON with a 'weight_map' object ({e})") from e
    out: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise FileNotFoundError(f"{index_path}: shard {shard} is listed but {shard_path} is missing")
        tensors = reader(shard_path)
        out.update({k: v for k, v in tensors.items() if weight_map.get(k) == shard})
    missing = sorted(k for k in weight_map if k not in out)
    if missing:
        raise CheckpointMismatchError(missing=missing, source=str(index_path),
                                      note="keys listed in weight_map are absent from their shard")
    return out


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    sd = torch_pickle.load_torch_pickle(path)
    return {k: np.asarray(v) for k, v in sd.items()}


def read_hf_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """State dict of a HF model directory (or a single weights file) as numpy arrays.

    Looks for model.safetensors, model.safetensors.index.json, pytorch_model.bin,
    pytorch_model.bin.index.json, in that order.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix == ".safetensors":
            return read_safetensors(path)
        if path.name.endswith(".index.json"):
            reader = read_safetensors if ".safetensors" in path.name else _read_torch_bin
            return _read_index(path, reader)
        return _read_torch_bin(path)
    if (path / SAFE_WEIGHTS).is_file():
        return read_safetensors(path / SAFE_WEIGHTS)
    if (path / SAFE_INDEX).is_file():
        return _read_index(path / SAFE_INDEX, read_safetensors)
    if (path / TORCH_WEIGHTS).is_file():
        return _read_torch_bin(path / TORCH_WEIGHTS)
    if (path / TORCH_INDEX).is_file():
        return _read_index(path / TORCH_INDEX, _read_torch_bin)
    raise FileNotFoundError(f"{path}: no {SAFE_WEIGHTS}, {SAFE_INDEX}, {TORCH_WEIGHTS} or "
                            f"{TORCH_INDEX} found")


def read_hf_config(path: str | os.PathLike) -> dict:
    """config.json of a HF model directory as a dict."""
    path = Path(path)
    cfg_path = path if path.is_file() else path / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: no config.json (expected a Hugging Face model directory)")
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{cfg_path}:{e.lineno}: invalid JSON ({e.msg})") from e


def model_module(model_type: str):
    """The fairjax model module (gpt2 / llama) for a HF `model_type` (`fairjax.models` registry)."""
    return lookup(model_type)


def config_from_hf_dict(d: Mapping[str, Any], **overrides):
    """GPT2Config / LlamaConfig from a HF config dict, chosen by `model_type`."""
    if "model_type" not in d:
        raise ConfigError("config has no 'model_type' key (expected 'gpt2' or 'llama')")
    return model_module(d["model_type"]).Config.from_hf(d, **overrides)


def config_from_hf_dir(path: str | os.PathLike, **overrides):
    """Model config of a HF directory, chosen by `model_type` (overrides: dtype, remat...)."""
    d = read_hf_config(path)
    try:
        return config_from_hf_dict(d, **overrides)
    except ConfigError as e:
        raise ConfigError(f"{Path(path) / 'config.json'}: {e}") from e


def load_hf_dir(path: str | os.PathLike, **overrides):
    """(config, float32 params) from a HF directory."""
    config = config_from_hf_dir(path, **overrides)
    sd = read_hf_state_dict(path)
    params = model_module(config.kind).params_from_hf(sd, config, source=str(path))
    return config, params


# --------------------------------------------------------------------------- writing
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def hf_config_dict(config, tokenizer=None) -> dict:
    """config.json content: `config.to_hf()` with bos/eos/pad ids taken from `tokenizer` (its HF
    `bos_token`/`eos_token`/`pad_token`) when given. Without a tokenizer, an id outside the
    vocabulary (e.g. GPT-2's default 50256 in a 1,000-token model) is dropped rather than written."""
    hf = config.to_hf()
    vocab = hf.get("vocab_size")
    hf_tok = getattr(tokenizer, "hf", None)  # the wrapped HF tokenizer of a fairjax Tokenizer
    for key in TOKEN_ID_KEYS:
        tok_id = getattr(hf_tok, key, None) if hf_tok is not None else hf.get(key)
        ids = tok_id if isinstance(tok_id, (list, tuple)) else [tok_id]
        ok = all(i is not None and (vocab is None or 0 <= int(i) < vocab) for i in ids)
        hf[key] = (list(tok_id) if isinstance(tok_id, (list, tuple)) else int(tok_id)) if ok else None
    return hf


def _generation_config(hf: dict) -> dict:
    gen = {"_from_model_config": True}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if hf.get(key) is not None:
            gen[key] = hf[key]
    return gen


def write_hf_dir(out_dir: str | os.PathLike, config, params, tokenizer=None,
                 shard_size_bytes: Optional[int] = None, overwrite: bool = False) -> Path:
    """Write a HF directory that `transformers` loads: config.json, generation_config.json (token
    ids from `tokenizer` when given, see `hf_config_dict`),
    model.safetensors (or shards `model-0000i-of-0000n.safetensors` + index when the weights
    exceed `shard_size_bytes`) and, if given, the tokenizer (`tokenizer.save(out_dir)`).

    Refuses a non-empty `out_dir` unless `overwrite=True`. Returns the directory.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; pass overwrite=True to replace its files")
    state_dict = model_module(config.kind).params_to_hf(params, config)
    out.mkdir(parents=True, exist_ok=True)
    hf_cfg = hf_config_dict(config, tokenizer)
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2, sort_keys=True) + "\n")
    (out / "generation_config.json").write_text(json.dumps(_generation_config(hf_cfg), indent=2) + "\n")
    total = sum(v.nbytes for v in state_dict.values())
    if shard_size_bytes is None or total <= shard_size_bytes:
        write_safetensors(out / SAFE_WEIGHTS, state_dict)
        (out / SAFE_INDEX).unlink(missing_ok=True)
    else:
        shards: list[dict[str, np.ndarray]] = [{}]
        size = 0
        for key in sorted(state_dict):
            nbytes = state_dict[key].nbytes
            if shards[-1] and size + nbytes > shard_size_bytes:
                shards.append({})
                size = 0
            shards[-1][key] = state_dict[key]
            size += nbytes
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(out / name, shard)
            weight_map.update({k: name for k in shard})
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        (out / SAFE_WEIGHTS).unlink(missing_ok=True)
    if tokenizer is not None:
        tokenizer.save(str(out))
    return out
