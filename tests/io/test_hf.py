"""Hugging Face directory I/O: reading (single/sharded/bfloat16), export, exact round trip,
loading the export with transformers (and PyTorch when it is importable)."""
import importlib.util
import json

import jax
import ml_dtypes
import numpy as np
import pytest

from fairjax.io import hf
from fairjax.errors import CheckpointMismatchError, ConfigError

KINDS = ["gpt2_tiny", "llama_tiny"]


def _export(fixtures_dir, name, out, **kw):
    config, params = hf.load_hf_dir(fixtures_dir / name / "hf")
    hf.write_hf_dir(out, config, params, **kw)
    return config, params


@pytest.mark.parametrize("name", KINDS)
def test_export_round_trip_is_exact(fixtures_dir, tmp_path, name):
    src = fixtures_dir / name / "hf"
    config, params = _export(fixtures_dir, name, tmp_path / "out")
    # same keys, shapes, dtypes and bytes as the PyTorch-written fixture
    orig, written = hf.read_hf_state_dict(src), hf.read_hf_state_dict(tmp_path / "out")
    assert {k: (v.shape, v.dtype) for k, v in written.items()} == {k: (v.shape, v.dtype) for k, v in orig.items()}
    for k in orig:
        np.testing.assert_array_equal(written[k], orig[k], err_msg=k)
    config2, params2 = hf.load_hf_dir(tmp_path / "out")
    assert config2 == config
    jax.tree_util.tree_map(np.testing.assert_array_equal, params2, params)
    gen = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert gen["bos_token_id"] == config.bos_token_id


@pytest.mark.parametrize("name", KINDS)
def test_export_loads_in_transformers(fixtures_dir, tmp_path, name):
    import transformers

    _export(fixtures_dir, name, tmp_path / "out")
    ours = transformers.AutoConfig.from_pretrained(tmp_path / "out")
    theirs = transformers.AutoConfig.from_pretrained(fixtures_dir / name / "hf")
    assert ours.to_diff_dict() == theirs.to_diff_dict()
    if importlib.util.find_spec("torch") is None:
        return  # the PyTorch comparison needs torch, which fairjax never requires
    import torch

    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager")
    model.eval()
    ref = np.load(fixtures_dir / name / "reference.npz")
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(ref["input_ids"]).long(),
                       attention_mask=torch.from_numpy(ref["attention_mask"]).long()).logits.numpy()
    np.testing.assert_allclose(logits, ref["logits"], atol=1e-5, rtol=1e-5)


def test_sharded_export_and_read(fixtures_dir, tmp_path):
    src = fixtures_dir / "llama_tiny" / "hf"
    total = sum(v.nbytes for v in hf.read_hf_state_dict(src).values())
    _export(fixtures_dir, "llama_tiny", tmp_path / "out", shard_size_bytes=total // 3)
    index = json.loads((tmp_path / "out" / hf.SAFE_INDEX).read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 3 and not (tmp_path / "out" / hf.SAFE_WEIGHTS).exists()
    assert index["metadata"]["total_size"] == total
    orig, written = hf.read_hf_state_dict(src), hf.read_hf_state_dict(tmp_path / "out")
    assert sorted(written) == sorted(orig)
    for k in orig:
        np.testing.assert_array_equal(written[k], orig[k])
    (tmp_path / "out" / sorted(shards)[0]).unlink()
    with pytest.raises(FileNotFoundError, match="shard"):
        hf.read_hf_state_dict(tmp_path / "out")


def test_refuses_to_overwrite(fixtures_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty"):
        _export(fixtures_dir, "gpt2_tiny", out)
    assert (out / "keep.txt").read_text() == "precious" and not (out / "config.json").exists()
    _export(fixtures_dir, "gpt2_tiny", out, overwrite=True)
    assert (out / hf.SAFE_WEIGHTS).is_file()


def test_tokenizer_is_saved(fixtures_dir, tmp_path):
    saved = []

    class FakeTokenizer:
        def save(self, path):
            saved.append(path)

    _export(fixtures_dir, "gpt2_tiny", tmp_path / "out", tokenizer=FakeTokenizer())
    assert saved == [str(tmp_path / "out")]


def test_reads_bfloat16_and_float16(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"a": rng.normal(size=(3, 4)).astype(ml_dtypes.bfloat16),
               "b": rng.normal(size=(5,)).astype(np.float16), "c": np.arange(6, dtype=np.int64)}
    hf.write_safetensors(tmp_path / "x.safetensors", tensors)
    from safetensors import safe_open

    with safe_open(tmp_path / "x.safetensors", "np") as f:  # the reference reader accepts our file
        assert sorted(f.keys()) == sorted(tensors)
        np.testing.assert_array_equal(f.get_tensor("b"), tensors["b"])
    back = hf.read_safetensors(tmp_path / "x.safetensors")
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype
        np.testing.assert_array_equal(back[k], v)


def test_config_errors_name_the_file(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ConfigError, match="config.json.*bert"):
        hf.config_from_hf_dir(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": \n')
    with pytest.raises(ConfigError, match="config.json:2"):
        hf.read_hf_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        hf.read_hf_state_dict(tmp_path)


def test_wrong_vocab_is_a_mismatch(fixtures_dir):
    src = fixtures_dir / "gpt2_tiny" / "hf"
    config = hf.config_from_hf_dir(src)
    bigger = config.replace(vocab_size=config.vocab_size + 6)
    with pytest.raises(CheckpointMismatchError, match="wte.weight: expected"):
        hf.model_module("gpt2").params_from_hf(hf.read_hf_state_dict(src), bigger)


def test_reads_pytorch_model_bin(fixtures_dir, tmp_path):
    """A torch.save'd state dict named pytorch_model.bin is read torch-free (restricted unpickler)."""
    import shutil

    src = fixtures_dir / "gpt2_tiny"
    shutil.copy(src / "hf" / "config.json", tmp_path / "config.json")
    shutil.copy(src / "bc_model.pkl", tmp_path / hf.TORCH_WEIGHTS)  # BC_LM keys: `model.` + HF keys
    sd = {k[len("model."):]: v for k, v in hf.read_hf_state_dict(tmp_path).items()}
    config, params = hf.load_hf_dir(src / "hf")
    from_bin = hf.model_module("gpt2").params_from_hf(sd, config)
    jax.tree_util.tree_map(np.testing.assert_array_equal, from_bin, params)
