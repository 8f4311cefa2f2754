"""Flax BERT vs the transformers fixture, and the BERT [CLS] embedder (batching, caching)."""
import json

import numpy as np
import pytest

from fairjax.errors import CheckpointMismatchError, ConfigError

TOL = 1e-4


@pytest.fixture(scope="module")
def bert_dir(fixtures_dir):
    return fixtures_dir / "bert_tiny" / "hf"


@pytest.fixture(scope="module")
def reference(fixtures_dir):
    ref = dict(np.load(fixtures_dir / "bert_tiny" / "reference.npz"))
    inputs = json.loads((fixtures_dir / "bert_tiny" / "reference_inputs.json").read_text())
    return ref, inputs


@pytest.fixture(scope="module")
def loaded(bert_dir):
    from fairjax.models import bert
    return bert.load_hf_dir(bert_dir)


def test_bert_matches_transformers(loaded, reference, bert_dir):
    model, params, config = loaded
    ref, _ = reference
    cfg = json.loads((bert_dir / "config.json").read_text())
    assert config.hidden_size == cfg["hidden_size"] and config.num_layers == cfg["num_hidden_layers"]
    out = model.apply({"params": params}, ref["input_ids"], ref["attention_mask"], ref["token_type_ids"])
    np.testing.assert_allclose(np.asarray(out.last_hidden_state), ref["last_hidden_state"], atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(out.last_hidden_state[:, 0]), ref["cls"], atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(out.pooler_output), ref["pooler_output"], atol=TOL, rtol=0)


def test_bert_roundtrip_and_mismatch(loaded, bert_dir):
    from safetensors.numpy import load_file

    from fairjax.models import bert
    _, params, config = loaded
    sd = load_file(str(bert_dir / "model.safetensors"))
    back = bert.params_to_hf(params, config)
    assert set(back) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])
    bad = dict(sd)
    del bad["encoder.layer.0.attention.self.query.weight"]
    bad["encoder.layer.0.output.dense.weight"] = bad["encoder.layer.0.output.dense.weight"].T
    with pytest.raises(CheckpointMismatchError) as e:
        bert.params_from_hf(bad, config)
    assert "encoder.layer.0.attention.self.query.weight" in str(e.value)
    assert "encoder.layer.0.output.dense.weight" in str(e.value)
    with pytest.raises(ConfigError, match="model_type"):
        bert.BertConfig.from_hf({"model_type": "gpt2"})


def test_cls_embedder_equals_fixture_and_caches(bert_dir, reference, tmp_path):
    from fairjax.rewards.embedders import BertClsEmbedder
    ref, inputs = reference
    cache = tmp_path / "bert_cache.npz"
    emb = BertClsEmbedder(bert_dir, max_length=inputs["max_length"], batch_size=4, lengths=(8, 16),
                          cache_path=cache)
    # the fixture tokenizer gives the fixture's input ids
    for i, s in enumerate(inputs["sentences"]):
        ids = emb.tokenizer.encode(s).ids
        assert ids == ref["input_ids"][i][: int(ref["attention_mask"][i].sum())].tolist()
    texts = inputs["sentences"] + ["an extra text", inputs["sentences"][0]]
    vecs = emb.embed(texts)
    want = ref["cls"] / np.linalg.norm(ref["cls"], axis=1, keepdims=True)
    np.testing.assert_allclose(vecs[:2], want, atol=TOL, rtol=0)
    np.testing.assert_allclose(vecs[3], vecs[0], atol=0)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert len(emb.cache) == 3 and cache.is_file()
    # a fresh embedder reads the disk cache and never runs the model for cached texts
    emb2 = BertClsEmbedder(bert_dir, max_length=inputs["max_length"], cache_path=cache)
    assert len(emb2.cache) == 3
    emb2.encode = None  # any model call would fail
    np.testing.assert_array_equal(emb2.embed(texts), vecs)


def test_cls_embedder_bad_dir(tmp_path):
    from fairjax.rewards.embedders import BertClsEmbedder
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        BertClsEmbedder(tmp_path)
