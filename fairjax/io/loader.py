"""Loading a model from any file format: `load(path_or_id, *, base=None, dtype=None)`.

`load(...) -> (model, params, tokenizer)` accepts
  * a Hugging Face directory (config.json + safetensors / sharded / pytorch_model.bin),
  * a Hugging Face model id (`gpt2`, `meta-llama/...`) found in the local HF cache (offline),
  * a fairjax model directory (`fairjax_model.json`, `params/`, `tokenizer/`),
  * a fairjax run directory (`model/` + `checkpoints/`): only through `fairjax.runs.load`, which
    passes the run-dir policy restore (it rebuilds the objective, a layer above io) as
    `restore_policy`; without it a trainer run dir raises ConfigError naming `fairjax.runs.load`,
  * a GGUF file (llama / gpt2, any type `gguf.quants` dequantises; `fairjax.io.gguf`),
  * a pretrained preset name (`smollm2-135m-instruct`, `fairjax.io.presets`): the installed
    package's GGUF, sha256-checked, converted once into `$FAIRJAX_CACHE`,
  * an FMs-at-work / ILQL `.pkl` (BC `model.pkl`, `model_converted.pkl`, full PerTokenIQL
    `model.pkl` -> its policy LM; `base=` gives config + tokenizer; see `load_upstream_ilql`).
`params` are float32 (numpy); `dtype` only sets the compute dtype of `model`.

Vocabulary: for HF sources whose tokenizer lacks the six layout tokens the wrapper adds them and
the embedding gets matching rows (`resize_embeddings`, mean of existing rows); any other
mismatch between `config.vocab_size` and `len(tokenizer)` raises `VocabMismatchError` (HF models
may have a larger, padded vocabulary). Checkpoint/model mismatches raise
`CheckpointMismatchError` listing keys and shapes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from fairjax.errors import CheckpointMismatchError
from fairjax.io import checkpoint, gguf, presets
from fairjax.io.gguf import load_gguf
from fairjax.io.hf import config_from_hf_dir, load_hf_dir
from fairjax.io.tokenizer import Tokenizer, assert_vocab_matches, resize_embeddings
from fairjax.io.torch_pickle import load_torch_pickle
from fairjax.io.upstream import split_upstream
from fairjax.models import build_model, model_module as _module
from fairjax.models.heads import head_params_from_torch


# ----------------------------------------------------------------------------- HF cache
def hf_cache_dir() -> Path:
    """HF hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub
    (read at call time, so tests and users can point it elsewhere)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface")
    return Path(home) / "hub"


def resolve_hf_id(model_id: str, revision: Optional[str] = None) -> Path:
    """Local snapshot directory of a cached HF model id; never touches the network."""
    from huggingface_hub import snapshot_download

    cache = hf_cache_dir()
    try:
        return Path(snapshot_download(model_id, revision=revision, cache_dir=str(cache),
                                      local_files_only=True))
    except Exception as e:  # LocalEntryNotFoundError, HFValidationError, ...
        raise FileNotFoundError(
            f"{model_id!r} is neither a local path nor a model in the Hugging Face cache {cache} "
            f"(fairjax never downloads at run time). Download it once with network access, e.g. "
            f"`hf download {model_id}` (or `huggingface-cli download {model_id}`), or "
            f"`python -c \"import huggingface_hub as h; h.snapshot_download('{model_id}')\"`, "
            f"set HF_HOME to that cache, or pass a local directory. ({type(e).__name__}: {e})"
        ) from None


def _local(path_or_id) -> Path:
    p = Path(path_or_id).expanduser()
    if p.exists():
        return p
    s = str(path_or_id)
    if s.startswith((".", "/", "~")) or s.count("/") > 1 or s.endswith((".pkl", ".pt", ".bin")):
        raise FileNotFoundError(f"{s} does not exist")
    return resolve_hf_id(s)


# ----------------------------------------------------------------------------- sources
def _hf_dir(path: Path, dtype, chat_template: Optional[bool]):
    overrides = {"dtype": dtype} if dtype else {}
    config, params = load_hf_dir(path, **overrides)
    has_tok = any((path / f).is_file() for f in ("tokenizer.json", "vocab.json",
                                                 "tokenizer.model", "tokenizer_config.json"))
    tokenizer = Tokenizer.from_dir(path, chat_template=chat_template) if has_tok else None
    if tokenizer is not None:
        if tokenizer.added_tokens and config.vocab_size == len(tokenizer) - len(tokenizer.added_tokens):
            params, config = resize_embeddings(params, config, len(tokenizer))
        assert_vocab_matches(tokenizer, config, allow_padding=True)
    return config, params, tokenizer


def _base_config_and_tokenizer(base, dtype, chat_template: Optional[bool] = None):
    """(config, tokenizer) from a base: HF dir / id or fairjax model dir (for bare state dicts)."""
    if base is None:
        raise ValueError("a bare state dict (.pkl) needs base=HF_DIR (or a fairjax model dir / HF "
                         "id) for the architecture config and tokenizer")
    path = _local(base)
    if checkpoint.is_model_dir(path):
        config = checkpoint.config_from_model_dir(path, dtype)
        return config, Tokenizer.from_dir(path / "tokenizer", chat_template=chat_template)
    config = config_from_hf_dir(path, **({"dtype": dtype} if dtype else {}))
    return config, Tokenizer.from_dir(path, chat_template=chat_template)


def _upstream_policy_sd(parts, source):
    sd = parts.policy if parts.policy is not None else parts.qv
    if sd is None:
        raise CheckpointMismatchError(missing=["lm_policy.*", "model.*"], source=source)
    return sd


def load_upstream_ilql(path, base, *, dtype: Optional[str] = None) -> dict[str, Any]:
    """All parts of an FMs-at-work checkpoint for the ILQL engineer.

    Returns {"format", "config", "model", "tokenizer", "policy", "qv", "target" (LM param trees
    or None), "heads" ({'v','q','q2','target_q','target_q2'} -> MLPHead params, or {}),
    "notes"}. For a BC / converted checkpoint only "policy" is set.
    """
    config, tokenizer = _base_config_and_tokenizer(base, dtype)
    parts = split_upstream(load_torch_pickle(path), source=str(path))
    conv = _module(config.kind).params_from_hf
    trunks = {}
    for name in ("policy", "qv", "target"):
        sd = getattr(parts, name)
        trunks[name] = None if sd is None else conv(sd, config, source=f"{path} ({parts.format} {name})")
    heads = {k: head_params_from_torch(v, "") for k, v in (parts.heads or {}).items()}
    assert_vocab_matches(tokenizer, config)
    return {"format": parts.format, "config": config, "model": build_model(config),
            "tokenizer": tokenizer, **trunks, "heads": heads, "notes": list(parts.notes)}


def _upstream(path: Path, base, dtype, chat_template: Optional[bool]):
    config, tokenizer = _base_config_and_tokenizer(base, dtype, chat_template)
    parts = split_upstream(load_torch_pickle(path), source=str(path))
    sd = _upstream_policy_sd(parts, str(path))
    params = _module(config.kind).params_from_hf(sd, config, source=f"{path} ({parts.format})")
    assert_vocab_matches(tokenizer, config)
    return config, params, tokenizer


def convert_gguf_into(files, out: Path) -> None:
    """Preset builder (`presets.prepare`): the GGUF `files[0]` as a fairjax model dir in `out`."""
    config, params, tokenizer = load_gguf(files[0], progress=True)
    checkpoint.save_model_dir(out, config, params, tokenizer, overwrite=True,
                              extra_meta={"converted_from": Path(files[0]).name})


def preset_model_dir(name: str) -> Path:
    """The fairjax model dir of a GGUF preset (`fairjax.io.presets`), converted once into
    `$FAIRJAX_CACHE` and reused."""
    preset = presets.get(name)
    if preset.kind != "gguf":
        raise presets.PresetError(f"preset {name!r} is a {preset.kind} model (a sentence "
                                  f"encoder), not a language model; LM presets: "
                                  f"{presets.names('gguf')}")
    return presets.prepare(name, convert_gguf_into)


def load_config_params_tokenizer(path_or_id, *, base=None, dtype: Optional[str] = None,
                                 chat_template: Optional[bool] = None, restore_policy=None):
    """Like `load` but returns (config, params, tokenizer). `restore_policy(run_dir, step)`:
    the trainer-run policy restore (`fairjax.runs` passes it; see the module docstring)."""
    if presets.is_preset(path_or_id) and not Path(path_or_id).exists():
        path = preset_model_dir(str(path_or_id))
    else:
        path = _local(path_or_id)
    if path.is_file():
        if gguf.is_gguf(path):
            return gguf.load_gguf(path, dtype=dtype, chat_template=chat_template)
        return _upstream(path, base, dtype, chat_template)
    if checkpoint.is_run_dir(path):
        config, params, tok = checkpoint.load_run_dir(path, dtype=dtype,
                                                      restore_policy=restore_policy)
    elif checkpoint.is_model_dir(path):
        config, params, tok = checkpoint.load_model_dir(path, dtype=dtype)
    elif (path / "config.json").is_file():
        return _hf_dir(path, dtype, chat_template)
    else:
        raise FileNotFoundError(
            f"{path}: not a Hugging Face directory (config.json), a fairjax model directory "
            f"(fairjax_model.json), a fairjax run directory (model/ + checkpoints/) or a .pkl file")
    if tok is not None and chat_template is not None and chat_template != tok.use_chat_template:
        tok = Tokenizer(tok.hf, use_chat_template=chat_template, source=tok.source)
    return config, params, tok


def load(path_or_id, *, base=None, dtype: Optional[str] = None, chat_template: Optional[bool] = None,
         restore_policy=None):
    """(model, float32 params, Tokenizer) from any supported source (module docstring).

    base: HF dir / HF id / fairjax model dir giving config + tokenizer for `.pkl` sources.
    dtype: compute dtype ('float32', 'bfloat16', ...); params stay float32.
    chat_template: wrap prompts with the tokenizer's chat template (instruct models); None (the
        default) does so when the tokenizer has one, False never.
    """
    config, params, tokenizer = load_config_params_tokenizer(
        path_or_id, base=base, dtype=dtype, chat_template=chat_template,
        restore_policy=restore_policy)
    return build_model(config), params, tokenizer


__all__ = ["load", "load_config_params_tokenizer", "load_upstream_ilql", "resolve_hf_id",
           "hf_cache_dir"]
