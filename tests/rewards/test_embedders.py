"""Sentence encoders (`fairjax.rewards.embedders.load_embedder`) against sentence-transformers, and the
Flax MPNet port against transformers' MPNetModel.

The tiny models are built here: a cased WordPiece tokenizer trained on a few sentences, random
BertModel / MPNetModel (biases and LayerNorm weights re-drawn so a port that dropped one would
fail), saved as sentence-transformers directories the way the published models are laid out
(modules.json, 1_Pooling/config.json, sentence_bert_config.json, the HF model at the root).
sentence-transformers and torch are test-only oracles.
"""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
st = pytest.importorskip("sentence_transformers")

TOL = 1e-5
CORPUS = [
    "Senior Backend Engineer, Python and Postgres, remote friendly.",
    "We are a rockstar team of ninjas looking for an aggressive competitive closer who dominates.",
    "Our Nursing team supports patients and families with care and compassion.",
    "KestrelJ Finance hires a Data Scientist in Berlin; Rust, SQL, Kubernetes.",
    "The accountant prepared the quarterly report for the Board of Directors.",
    "She is a Software Engineer who speaks at conferences about Distributed Systems.",
]
TEXTS = [
    "A man is eating food.",
    "A MAN IS EATING A PIECE OF BREAD.",
    "",
    "Remote Python engineer wanted " * 12,  # longer than max_seq_length: truncated
    "Nursing, care and compassion for Patients in Berlin.",
    "ninjas",
    "Data Scientist (SQL, Rust) at KestrelJ Finance; competitive closer who dominates the Board.",
]


def _tokenizer_dir(path):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)  # cased: lower-casing matters
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # MPNet's order: <pad> = 1
    tok.train_from_iterator(CORPUS + [t.lower() for t in CORPUS],
                            trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   cls_token="<s>", sep_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>")
    fast.save_pretrained(path)
    return tok.get_vocab_size()


def _randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            elif "LayerNorm.weight" in name:
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def _hf_model(kind, vocab):
    import transformers

    torch.manual_seed(0)
    common = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=48, pad_token_id=1)
    if kind == "bert":
        cfg = transformers.BertConfig(max_position_embeddings=64, **common)
        model = transformers.BertModel(cfg)
    else:
        cfg = transformers.MPNetConfig(max_position_embeddings=66, relative_attention_num_buckets=32,
                                       layer_norm_eps=1e-5, **common)
        model = transformers.MPNetModel(cfg)
    return _randomise(model, 10_000 + len(kind))


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """{kind: HF model dir with the tiny tokenizer}, saved and reloadable by transformers."""
    out = {}
    for kind in ("bert", "mpnet"):
        d = tmp_path_factory.mktemp(f"hf_{kind}")
        vocab = _tokenizer_dir(d)
        _hf_model(kind, vocab).save_pretrained(d)
        out[kind] = d
    return out


def _st_dir(tmp_path_factory, hf_dir, pooling, normalize=True, max_seq_length=48, lower=False):
    """A sentence-transformers directory: the HF model at the root + the module configs."""
    import shutil

    d = tmp_path_factory.mktemp("st")
    for f in hf_dir.iterdir():
        shutil.copy(f, d / f.name)
    mods = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:  # like the published models: a Normalize entry without a folder
        mods.append({"idx": 2, "name": "2", "path": "2_Normalize",
                     "type": "sentence_transformers.models.Normalize"})
    (d / "modules.json").write_text(json.dumps(mods))
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **pooling}))
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length,
                                                             "do_lower_case": lower}))
    return d


def _legacy(*modes):
    keys = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens",
            "mean": "pooling_mode_mean_tokens", "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
            "weightedmean": "pooling_mode_weightedmean_tokens", "lasttoken": "pooling_mode_lasttoken"}
    return {k: m in modes for m, k in keys.items()}


def _compare(d, normalize_flags=(False, True), lengths=(8, 16, 48)):
    from sentence_transformers import SentenceTransformer

    from fairjax.rewards.embedders import load_embedder

    ref_model = SentenceTransformer(str(d), device="cpu")
    ours = load_embedder(d, lengths=lengths, batch_size=4)
    for flag in normalize_flags:
        ref = ref_model.encode(TEXTS, normalize_embeddings=flag, convert_to_numpy=True)
        got = ours.encode(TEXTS, normalize_embeddings=flag)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)
    return ours, ref_model


POOLINGS = {
    "mean": _legacy("mean"),
    "cls": _legacy("cls"),
    "max": _legacy("max"),
    "mean_sqrt_len": _legacy("mean_sqrt_len_tokens"),
    # several booleans: concatenated in sentence-transformers' fixed order cls, max, mean, ...
    "cls+mean+max": _legacy("mean", "max", "cls"),
    # the newer list form keeps the order it is given in
    "list:max,weightedmean,lasttoken,cls": {"pooling_mode": ["max", "weightedmean", "lasttoken", "cls"]},
}


@pytest.mark.parametrize("pooling", list(POOLINGS))
def test_bert_encoder_equals_sentence_transformers(tmp_path_factory, hf_dirs, pooling):
    d = _st_dir(tmp_path_factory, hf_dirs["bert"], POOLINGS[pooling], normalize=pooling != "max")
    ours, _ = _compare(d)
    n_modes = 3 if pooling == "cls+mean+max" else 4 if pooling.startswith("list") else 1
    assert ours.dim == 32 * n_modes


def test_concatenation_order_matters(tmp_path_factory, hf_dirs):
    """The list form in another order gives the same blocks in that order (not a fixed order)."""
    from fairjax.rewards.embedders import load_embedder

    a = load_embedder(_st_dir(tmp_path_factory, hf_dirs["bert"], {"pooling_mode": ["cls", "mean"]},
                              normalize=False), lengths=(48,))
    b = load_embedder(_st_dir(tmp_path_factory, hf_dirs["bert"], {"pooling_mode": ["mean", "cls"]},
                              normalize=False), lengths=(48,))
    va, vb = a.encode(TEXTS[:3]), b.encode(TEXTS[:3])
    np.testing.assert_allclose(va[:, :32], vb[:, 32:], atol=1e-6)
    assert not np.allclose(va, vb, atol=1e-3)
    assert a.id != b.id


def test_lower_casing_and_truncation(tmp_path_factory, hf_dirs):
    """do_lower_case=true lower-cases before the (cased) tokenizer; max_seq_length truncates."""
    d = _st_dir(tmp_path_factory, hf_dirs["bert"], _legacy("mean"), max_seq_length=10, lower=True)
    ours, ref_model = _compare(d, lengths=(10,))
    assert ours.max_length == 10 and ours.do_lower_case
    cased = _st_dir(tmp_path_factory, hf_dirs["bert"], _legacy("mean"), max_seq_length=10)
    from fairjax.rewards.embedders import load_embedder

    other = load_embedder(cased, lengths=(10,)).encode(TEXTS)
    assert np.abs(other - ours.encode(TEXTS)).max() > 1e-3  # lower-casing changed the vectors
    long = ["Remote Python engineer wanted " * 12, "Remote Python engineer wanted " * 20]
    v = ours.encode(long)
    np.testing.assert_allclose(v[0], v[1], atol=1e-6)  # the same first 10 tokens


def test_mpnet_matches_transformers(hf_dirs):
    """fairjax.models.mpnet vs transformers MPNetModel: padded batch, every position + pooler."""
    from transformers import AutoTokenizer

    from fairjax.models import mpnet

    d = hf_dirs["mpnet"]
    ref_model = _hf_model("mpnet", json.loads((d / "config.json").read_text())["vocab_size"])
    tok = AutoTokenizer.from_pretrained(str(d))
    batch = tok(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="np")
    with torch.no_grad():
        ref = ref_model(input_ids=torch.tensor(batch["input_ids"]),
                        attention_mask=torch.tensor(batch["attention_mask"]))
    model, params, config = mpnet.load_hf_dir(d)
    assert config.layer_norm_eps == 1e-5 and config.num_layers == 2
    out = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"])
    assert batch["input_ids"].shape[1] > 20  # offsets reach the log-spaced buckets
    np.testing.assert_allclose(np.asarray(out.last_hidden_state), ref.last_hidden_state.numpy(),
                               atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(out.pooler_output), ref.pooler_output.numpy(), atol=TOL, rtol=0)
    # the HF key map round-trips, and relative buckets follow transformers' static method
    from safetensors.numpy import load_file

    sd = load_file(str(d / "model.safetensors"))
    back = mpnet.params_to_hf(params, config)
    for k, v in back.items():
        np.testing.assert_array_equal(v, sd[k])
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    rel = np.arange(-300, 301)
    np.testing.assert_array_equal(np.asarray(mpnet.relative_position_bucket(rel)),
                                  MPNetEncoder.relative_position_bucket(torch.tensor(rel)).numpy())


@pytest.mark.parametrize("pooling", ["mean", "cls+mean+max"])
def test_mpnet_encoder_equals_sentence_transformers(tmp_path_factory, hf_dirs, pooling):
    d = _st_dir(tmp_path_factory, hf_dirs["mpnet"], POOLINGS[pooling])
    ours, _ = _compare(d)
    assert ours.model_type == "mpnet"


def test_embed_cache_and_identity(tmp_path_factory, hf_dirs, tmp_path):
    from fairjax.rewards.embedders import Embedder, load_embedder

    d = _st_dir(tmp_path_factory, hf_dirs["bert"], _legacy("mean"), normalize=False)
    cache = tmp_path / "vec.npz"
    e = load_embedder(d, lengths=(48,), cache_path=cache)
    assert isinstance(e, Embedder)
    v = e.embed(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(v[[0, 1, 3]], axis=1), 1.0, atol=1e-6)  # Embedder rows: unit
    np.testing.assert_allclose(v, e.encode(TEXTS, normalize_embeddings=True), atol=1e-6)
    assert cache.is_file()
    again = load_embedder(d, lengths=(48,), cache_path=cache)
    assert len(again.cache) == len(set(TEXTS))
    again._fwd = None  # everything comes from the on-disk cache: no forward pass
    np.testing.assert_array_equal(again.embed(TEXTS[::-1]), v[::-1])
    other = load_embedder(_st_dir(tmp_path_factory, hf_dirs["bert"], _legacy("cls"), normalize=False),
                          lengths=(48,))
    assert other.id != e.id


def test_bad_directories_name_the_file(tmp_path_factory, hf_dirs):
    from fairjax.rewards.embedders import load_embedder

    d = _st_dir(tmp_path_factory, hf_dirs["bert"], _legacy("mean"))
    mods = json.loads((d / "modules.json").read_text())
    mods.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (d / "modules.json").write_text(json.dumps(mods))
    with pytest.raises(ValueError, match=r"modules\.json.*Dense"):
        load_embedder(d)
    d2 = _st_dir(tmp_path_factory, hf_dirs["bert"], {"pooling_mode": "median"})
    with pytest.raises(ValueError, match=r"1_Pooling/config\.json.*median"):
        load_embedder(d2)
    (d2 / "1_Pooling" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"1_Pooling/config\.json: invalid JSON at line 1"):
        load_embedder(d2)
    with pytest.raises(ValueError, match="not a preset"):
        load_embedder(d2 / "missing")


# ----------------------------------------------------------------------------- the real models
REAL_PAIR = ["A man is eating food.", "A man is eating a piece of bread."]


def _real(name):
    from fairjax.io import presets

    try:
        return presets.sentence_transformers_dir(name)
    except presets.PresetError as e:
        if os.environ.get("CI"):  # CI installs every preset package: absence is a failure
            pytest.fail(str(e))
        pytest.skip(str(e))


@pytest.mark.slow
def test_real_minilm_equals_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from fairjax.rewards.embedders import load_embedder

    d = _real("all-minilm-l6-v2")
    ours = load_embedder("all-minilm-l6-v2")
    assert ours.modes == ("mean",) and ours.normalize and ours.max_length == 256
    texts = REAL_PAIR + [TEXTS[3] * 8, CORPUS[3]]  # one text past 256 tokens
    got = ours.encode(texts, normalize_embeddings=True)
    ref = SentenceTransformer(str(d), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)
    assert float(got[0] @ got[1]) == pytest.approx(0.755, abs=5e-4)


@pytest.mark.slow
def test_real_mpnet_equals_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from fairjax.rewards.embedders import load_embedder

    d = _real("all-mpnet-base-v2")
    ours = load_embedder("all-mpnet-base-v2", lengths=(16, 384))
    assert ours.model_type == "mpnet" and ours.max_length == 384
    texts = REAL_PAIR + [CORPUS[3]]
    got = ours.encode(texts, normalize_embeddings=True)
    ref = SentenceTransformer(str(d), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)


# ----------------------------------------------------------------------------- reward.embedder
def test_reward_embedder_choice_reaches_scorers_and_spec(tmp_path_factory, hf_dirs, tmp_path):
    """reward.embedder picks the encoder of the diversity matching and the preservation cosine,
    and the reward spec (the reward cache's key) changes with it."""
    from ml_collections import ConfigDict

    from fairjax.rewards.embedders import HashingTfidfEmbedder, SentenceEncoder
    from fairjax.rewards.registry import build_reward_scorer, reward_config, reward_spec, spec_hash
    from trainer_fixtures import load_config

    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"c{i}", "text": t, "gender": "female" if i % 2 else "male"})
                            + "\n" for i, t in enumerate(CORPUS)))
    d = _st_dir(tmp_path_factory, hf_dirs["bert"], _legacy("mean"))

    def cfg(**kw):
        return reward_config(ConfigDict({
            "scorer": "composite", "pool": str(pool),
            "diversity": {"k": 2, "select_k": 1, "n_features": 256},
            "preservation": {"metric": "cosine"},
            "composite": {"terms": "diversity,preservation", "weights": "1,1"}, **kw}))

    enc = build_reward_scorer(cfg(embedder=str(d)))
    div, pres = enc.terms[0][2], enc.terms[1][2]
    assert isinstance(div.embedder, SentenceEncoder) and pres.embedder is div.embedder
    vec = div.embedder.embed(TEXTS[:2])
    ref = SentenceEncoder(d).encode(TEXTS[:2], normalize_embeddings=True)
    np.testing.assert_allclose(vec, ref, atol=1e-6)
    out = enc.score_texts(TEXTS[:2], references=TEXTS[:2][::-1])
    assert np.all(np.isfinite(out))
    tfidf = build_reward_scorer(cfg(embedder="tfidf"))
    assert isinstance(tfidf.terms[0][2].embedder, HashingTfidfEmbedder)
    legacy = build_reward_scorer(cfg())  # a config written before reward.embedder: tfidf
    assert isinstance(legacy.terms[0][2].embedder, HashingTfidfEmbedder)
    hashes = {spec_hash(reward_spec(cfg(embedder=e))) for e in (str(d), "tfidf", "all-minilm-l6-v2")}
    assert len(hashes) == 3
    assert reward_spec(cfg(embedder="all-minilm-l6-v2"))["embedder"] == {"name": "all-minilm-l6-v2"}
    # the directory's weights are part of its spec: other weights, another reward cache
    before = spec_hash(reward_spec(cfg(embedder=str(d))))
    (d / "config.json").write_text((d / "config.json").read_text().replace("\n", "\n "))
    assert spec_hash(reward_spec(cfg(embedder=str(d)))) != before
    # the shipped default is MiniLM, in the training and the evaluation configs
    assert load_config("ilql").reward.embedder == "all-minilm-l6-v2"
    assert load_config("eval").scorer.embedder == "all-minilm-l6-v2"
    with pytest.raises(ValueError, match="not a preset"):
        build_reward_scorer(cfg(embedder="no-such-model"))


def test_reward_benchmark_real_data_mode(tmp_path_factory, hf_dirs, tmp_path):
    """`bench reward` on given postings/pools: every embedder timed; NAME@N extrapolates."""
    import types

    from fairjax.benchmarks import reward

    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"c{i}", "text": t, "gender": "female" if i % 2 else "male"})
                            + "\n" for i, t in enumerate(CORPUS * 3)))
    posts = tmp_path / "posts.jsonl"
    posts.write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n"
                             for i, t in enumerate(TEXTS) if t))
    d = _st_dir(tmp_path_factory, hf_dirs["mpnet"], _legacy("mean"))
    out = reward.run(types.SimpleNamespace(texts=str(posts), pools=str(pool), batch=None,
                                           embedders=f"tfidf,{d},{d}@2", json=str(tmp_path / "r.json")))
    assert out["n_texts"] == 6 and out["n_candidates"] == 18
    rows = out["embedders"]
    assert [r["extrapolated"] for r in rows] == [False, False, True]
    assert rows[1]["dim"] == 32 and rows[0]["dim"] == 4096
    assert rows[2]["embedded_subset"] == {"texts": 2, "candidates": 2}
    assert all(r["seconds"]["embed_and_match"] > 0 for r in rows)
    assert json.loads((tmp_path / "r.json").read_text())["embedders"][1]["id"] == rows[1]["id"]
