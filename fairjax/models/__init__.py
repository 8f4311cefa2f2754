"""fairjax language models (Flax Linen) and the model-type registry.

`models/` imports nothing of fairjax but `fairjax.errors`; loading weights from files is
`fairjax.io` (`fairjax.io.loader.load`, or `fairjax.runs.load` for run directories too).
"""
from __future__ import annotations

import importlib

from fairjax.errors import ConfigError

# model_type (HF `config.json`, fairjax model dirs) -> module with Config, Model, params_from_hf, ...
MODEL_TYPES = {"gpt2": "fairjax.models.gpt2", "llama": "fairjax.models.llama"}


def model_module(kind: str):
    """The fairjax model module (gpt2 / llama) of a model type."""
    if kind not in MODEL_TYPES:
        raise ConfigError(f"model_type={kind!r} is not supported; expected one of "
                          f"{sorted(MODEL_TYPES)}")
    return importlib.import_module(MODEL_TYPES[kind])


def get_config_class(kind: str) -> type:
    """GPT2Config / LlamaConfig for kind 'gpt2' / 'llama'."""
    return model_module(kind).Config


def build_model(config):
    """The Flax Linen module for `config` (GPT2LMHeadModel / LlamaForCausalLM)."""
    return model_module(config.kind).Model(config)


__all__ = ["MODEL_TYPES", "model_module", "get_config_class", "build_model"]
