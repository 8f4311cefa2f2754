"""GPT-2 specifics: config round trip, key prefixes, old buffers, tied head."""
import jax
import numpy as np
import pytest

from fairjax.io import hf
from fairjax.errors import CheckpointMismatchError, ConfigError
from fairjax.models import gpt2


@pytest.fixture(scope="module")
def gpt2_dir(fixtures_dir):
    return fixtures_dir / "gpt2_tiny" / "hf"


def test_config_round_trip(gpt2_dir):
    raw = hf.read_hf_config(gpt2_dir)
    config = gpt2.GPT2Config.from_hf(raw)
    assert (config.vocab_size, config.hidden_size, config.num_layers, config.num_heads,
            config.max_positions) == (raw["vocab_size"], raw["n_embd"], raw["n_layer"], raw["n_head"],
                                      raw["n_positions"])
    assert config.head_dim * config.num_heads == config.hidden_size
    assert config.num_kv_heads == config.num_heads
    again = config.to_hf()
    for key, value in raw.items():
        if key not in ("transformers_version", "n_inner"):
            assert again[key] == value, key
    assert gpt2.GPT2Config.from_hf(again) == config
    assert gpt2.GPT2Config.from_hf(raw, dtype="bfloat16", remat="block").dtype == "bfloat16"
    with pytest.raises(ConfigError, match="remat"):
        gpt2.GPT2Config.from_hf(raw, remat="sometimes")
    with pytest.raises(ConfigError, match="model_type"):
        gpt2.GPT2Config.from_hf({**raw, "model_type": "llama"})


def test_key_prefixes_buffers_and_tied_head(gpt2_dir):
    config = hf.config_from_hf_dir(gpt2_dir)
    sd = hf.read_hf_state_dict(gpt2_dir)
    ref = gpt2.params_from_hf(sd, config)
    # GPT2Model / original OpenAI layout: no `transformer.` prefix, with causal-mask buffers
    bare = {k[len("transformer."):]: v for k, v in sd.items()}
    n_pos = config.max_positions
    for i in range(config.num_layers):
        bare[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, n_pos, n_pos), np.uint8))
        bare[f"h.{i}.attn.masked_bias"] = np.float32(-1e4)
    bare["lm_head.weight"] = sd["transformer.wte.weight"]  # tied, equal: accepted
    jax.tree_util.tree_map(np.testing.assert_array_equal, gpt2.params_from_hf(bare, config), ref)
    bare["lm_head.weight"] = sd["transformer.wte.weight"] + 1.0  # trained untied: refused
    with pytest.raises(CheckpointMismatchError, match="tie_word_embeddings"):
        gpt2.params_from_hf(bare, config)
    untied = config.replace(tie_word_embeddings=False)
    params = gpt2.params_from_hf(bare, untied)
    np.testing.assert_array_equal(params["lm_head"]["kernel"], bare["lm_head.weight"].T)


def test_params_to_hf_is_exact_inverse(gpt2_dir):
    config = hf.config_from_hf_dir(gpt2_dir)
    sd = hf.read_hf_state_dict(gpt2_dir)
    back = gpt2.params_to_hf(gpt2.params_from_hf(sd, config), config)
    assert sorted(back) == sorted(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and back[k].shape == sd[k].shape
        np.testing.assert_array_equal(back[k], sd[k])


def test_presets_are_configs():
    assert set(gpt2.PRESETS) >= {"tiny", "small", "medium"}
    small = gpt2.PRESETS["small"]
    assert (small.hidden_size, small.num_layers, small.vocab_size) == (768, 12, 50257)
