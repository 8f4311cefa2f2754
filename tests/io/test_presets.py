"""Pretrained presets (fairjax.io.presets): sha256 refusal naming both hashes, the pip line for a
missing package, one build into $FAIRJAX_CACHE then reuse; the LM preset through runs.load and
model.init; resize_embeddings on a tied model keeps the tie."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fairjax.io import presets


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("FAIRJAX_CACHE", str(d))
    return d


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A preset whose 'package' file is a local file (source_files patched)."""
    f = tmp_path / "weights.bin"
    f.write_bytes(b"fairjax test weights")
    sha = hashlib.sha256(f.read_bytes()).hexdigest()
    p = presets.Preset("fake-lm", "gguf", (("fake-dist", "fake/weights.bin"),), sha,
                       "pip install --no-deps fake-dist==1.0")
    monkeypatch.setitem(presets.PRESETS, p.name, p)
    monkeypatch.setattr(presets, "source_files", lambda preset: [f])
    return p, f


def test_cache_dir_honours_env(cache):
    assert presets.cache_dir() == cache


def test_built_once_then_reused(cache, fake):
    p, f = fake
    calls = []

    def build(files, out):
        calls.append(files)
        (out / "model.txt").write_bytes(files[0].read_bytes())

    d1 = presets.prepare(p.name, build, progress=False)
    d2 = presets.prepare(p.name, build, progress=False)
    assert d1 == d2 and d1.parent == cache and len(calls) == 1
    assert (d1 / "model.txt").read_bytes() == f.read_bytes()
    assert (d1 / presets.COMPLETE).is_file()


def test_failed_build_leaves_no_entry(cache, fake):
    p, _ = fake

    def build(files, out):
        (out / "half").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        presets.prepare(p.name, build, progress=False)
    assert not presets.entry_dir(p).exists()
    assert not [x for x in cache.iterdir() if not x.name.startswith(".")]


def test_sha_mismatch_names_both_hashes(cache, fake, monkeypatch):
    p, f = fake
    bad = presets.Preset(p.name, p.kind, p.parts, "0" * 64, p.pip)
    monkeypatch.setitem(presets.PRESETS, p.name, bad)
    with pytest.raises(presets.PresetError) as e:
        presets.prepare(p.name, lambda files, out: pytest.fail("built unverified weights"),
                        progress=False)
    msg = str(e.value)
    assert "0" * 64 in msg and p.sha256 in msg and str(f) in msg


def test_missing_package_gives_pip_line(cache, monkeypatch):
    p = presets.Preset("ghost-lm", "gguf", (("fairjax-no-such-dist", "x/y.gguf"),), "0" * 64,
                       "pip install --no-deps fairjax-no-such-dist==0.1")
    monkeypatch.setitem(presets.PRESETS, p.name, p)
    from fairjax.io.loader import load_config_params_tokenizer

    with pytest.raises(presets.PresetError, match="pip install --no-deps fairjax-no-such-dist==0.1"):
        load_config_params_tokenizer("ghost-lm")


def test_encoder_preset_is_not_an_lm(cache):
    from fairjax.io.loader import preset_model_dir

    with pytest.raises(presets.PresetError, match="not a language model"):
        preset_model_dir("all-minilm-l6-v2")


def test_lm_preset_through_runs_load_and_model_init(tmp_path, cache, monkeypatch):
    """The preset builder converts the (here: a tiny, written-by-the-test) GGUF once; runs.load
    and the training builder's model.init both resolve the name."""
    import json

    from gguf import GGMLQuantizationType as Q
    from gguf_helpers import SPECIALS, write_llama_gguf
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(["hello world, a job posting"] * 4, vocab_size=280, min_frequency=1,
                            special_tokens=SPECIALS, show_progress=False)
    model = json.loads(tok._tokenizer.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    gg = tmp_path / "tiny.gguf"
    write_llama_gguf(gg, (tokens, merges, [3 if t in SPECIALS else 1 for t in tokens]),
                     Q.Q8_0, True)
    p = presets.Preset("tiny-gguf-lm", "gguf", (("d", "tiny.gguf"),),
                       hashlib.sha256(gg.read_bytes()).hexdigest(), "pip install d")
    monkeypatch.setitem(presets.PRESETS, p.name, p)
    monkeypatch.setattr(presets, "source_files", lambda preset: [gg])
    from fairjax.io import loader

    built = []
    real = loader.convert_gguf_into
    monkeypatch.setattr(loader, "convert_gguf_into",
                        lambda files, out: (built.append(1), real(files, out)))
    from fairjax.runs import load

    m1, params, t1 = load("tiny-gguf-lm")
    load("tiny-gguf-lm")
    assert built == [1]
    assert m1.config.tie_word_embeddings and "lm_head" not in params
    assert (presets.entry_dir(p) / "fairjax_model.json").is_file()
    from trainer_fixtures import load_config

    from fairjax.train import build as B

    cfg = load_config("bc")
    cfg.model.init = "tiny-gguf-lm"
    mcfg, _, bparams, btok = B.build_model(cfg, tmp_path / "run")
    assert built == [1] and len(btok) == len(t1) and mcfg.tie_word_embeddings
    np.testing.assert_array_equal(np.asarray(bparams["embed_tokens"]["embedding"]),
                                  params["embed_tokens"]["embedding"])

@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_resize_embeddings_keeps_tie(kind):
    import jax

    from fairjax.io.tokenizer import resize_embeddings
    from fairjax.models import gpt2, llama

    mod = llama if kind == "llama" else gpt2
    cfg = mod.PRESETS["tiny"].replace(tie_word_embeddings=True)
    params = jax.tree.map(np.asarray, mod.init_params(cfg, jax.random.PRNGKey(0)))
    assert "lm_head" not in params
    emb = ("embed_tokens" if kind == "llama" else "wte")
    new, ncfg = resize_embeddings(params, cfg, cfg.vocab_size + 6)
    assert ncfg.tie_word_embeddings and "lm_head" not in new
    e = new[emb]["embedding"]
    assert e.shape == (cfg.vocab_size + 6, cfg.hidden_size)
    np.testing.assert_array_equal(e[:cfg.vocab_size], params[emb]["embedding"])
    np.testing.assert_allclose(e[cfg.vocab_size:], np.broadcast_to(
        params[emb]["embedding"].mean(0), (6, cfg.hidden_size)), rtol=1e-6)
    ids = np.array([[1, cfg.vocab_size + 2]])
    logits = np.asarray(mod.Model(ncfg).apply({"params": new}, ids).logits)
    assert logits.shape == (1, 2, cfg.vocab_size + 6)
    untied = cfg.replace(tie_word_embeddings=False)
    up = jax.tree.map(np.asarray, mod.init_params(untied, jax.random.PRNGKey(1)))
    nu, _ = resize_embeddings(up, untied, cfg.vocab_size + 6)
    assert nu["lm_head"]["kernel"].shape == (cfg.hidden_size, cfg.vocab_size + 6)
