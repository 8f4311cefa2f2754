"""LLaMA specifics: rope_theta location, RoPE scaling, tied head, config round trip."""
import jax
import numpy as np
import pytest

from fairjax.io import hf
from fairjax.errors import ConfigError
from fairjax.models import llama


@pytest.fixture(scope="module")
def llama_dir(fixtures_dir):
    return fixtures_dir / "llama_tiny" / "hf"


def test_rope_theta_from_either_place(llama_dir):
    raw = hf.read_hf_config(llama_dir)
    new = llama.LlamaConfig.from_hf(raw)
    theta = (raw.get("rope_parameters") or {}).get("rope_theta", raw.get("rope_theta"))
    assert new.rope_theta == theta and new.rope_scaling is None
    old_style = {k: v for k, v in raw.items() if k != "rope_parameters"}
    old_style["rope_theta"] = theta
    assert llama.LlamaConfig.from_hf(old_style) == new
    other = llama.LlamaConfig.from_hf({**old_style, "rope_theta": 2 * theta})
    assert not np.allclose(other.inv_freq(), new.inv_freq())
    assert new.inv_freq().shape == (new.head_dim // 2,)


def test_config_round_trip(llama_dir):
    raw = hf.read_hf_config(llama_dir)
    config = llama.LlamaConfig.from_hf(raw)
    assert (config.num_heads, config.num_kv_heads, config.head_dim, config.intermediate_size) == (
        raw["num_attention_heads"], raw["num_key_value_heads"],
        raw.get("head_dim", raw["hidden_size"] // raw["num_attention_heads"]), raw["intermediate_size"])
    again = config.to_hf()
    for key, value in raw.items():
        if key != "transformers_version":
            assert again[key] == value, key
    assert llama.LlamaConfig.from_hf(again) == config
    with pytest.raises(ConfigError, match="hidden_act"):
        llama.LlamaConfig.from_hf({**raw, "hidden_act": "gelu"})
    with pytest.raises(ConfigError, match="rope_type"):
        llama.LlamaConfig.from_hf({**raw, "rope_parameters": {"rope_theta": 1e4, "rope_type": "yarn"}})


def test_llama3_rope_scaling():
    """Llama-3.1 scaling: high frequencies unchanged, low ones divided by `factor`."""
    rope = {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    base = llama.LlamaConfig(hidden_size=256, num_heads=2, rope_theta=500000.0)
    scaled = llama.LlamaConfig.from_hf({**base.to_hf(), "rope_parameters": rope})
    assert scaled.rope_type == "llama3"
    a, b = base.inv_freq(), scaled.inv_freq()
    wavelen = 2 * np.pi / a
    np.testing.assert_allclose(b[wavelen < 8192 / 4], a[wavelen < 8192 / 4])
    np.testing.assert_allclose(b[wavelen > 8192], a[wavelen > 8192] / 8, rtol=1e-6)
    assert scaled.to_hf()["rope_parameters"] == rope


def test_tied_llama_loads_without_lm_head(llama_dir, fixtures_dir):
    config = hf.config_from_hf_dir(llama_dir).replace(tie_word_embeddings=True)
    sd = hf.read_hf_state_dict(llama_dir)
    sd.pop("lm_head.weight")
    params = llama.params_from_hf(sd, config)
    assert "lm_head" not in params
    ids = np.load(fixtures_dir / "llama_tiny" / "reference.npz")["input_ids"]
    out = llama.LlamaForCausalLM(config).apply({"params": params}, ids)
    np.testing.assert_allclose(out.logits, out.hidden_states @ params["embed_tokens"]["embedding"].T,
                               atol=1e-5)
    assert sorted(llama.params_to_hf(params, config)) == sorted(sd)


def test_params_to_hf_is_exact_inverse(llama_dir):
    config = hf.config_from_hf_dir(llama_dir)
    sd = hf.read_hf_state_dict(llama_dir)
    params = llama.params_from_hf(sd, config)
    q = params["layers_0"]["self_attn"]["q_proj"]["kernel"]
    np.testing.assert_array_equal(q, sd["model.layers.0.self_attn.q_proj.weight"].T)  # transposed once
    back = llama.params_to_hf(params, config)
    assert sorted(back) == sorted(sd)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, sd)


def test_presets():
    seven = llama.PRESETS["7b"]
    assert (seven.hidden_size, seven.intermediate_size, seven.num_layers, seven.num_heads,
            seven.num_kv_heads, seven.vocab_size) == (4096, 11008, 32, 32, 32, 32000)
    assert {"tiny", "1b", "7b"} <= set(llama.PRESETS)
