"""fairjax.runs.load (fairjax.io.loader.load + run dirs): HF dirs, HF ids from the local cache, model dirs, run dirs, vocab handling."""
import json
import shutil

import numpy as np
import pytest

from fairjax.io.tokenizer import Tokenizer
from fairjax.io.checkpoint import (find_lm_params, load_model_dir, restore_pytree,
                                   save_model_dir, save_pytree)
from fairjax.errors import CheckpointMismatchError
from fairjax.io.hf import load_hf_dir, read_hf_state_dict, write_safetensors
from fairjax.models import build_model, get_config_class
from fairjax.runs import load
from model_helpers import assert_trees_equal, reference_logits


def _tolerance(root):
    return json.loads((root / "meta.json").read_text())["suggested_tolerances"]["logits"]


@pytest.mark.parametrize("name", ["gpt2_tiny", "llama_tiny"])
def test_load_hf_dir_matches_pytorch(fixtures_dir, name):
    root = fixtures_dir / name
    ref = np.load(root / "reference.npz")
    model, params, tok = load(root / "hf", dtype="float32")
    assert type(model) is type(build_model(get_config_class(name.split("_")[0]).from_hf(
        json.loads((root / "hf" / "config.json").read_text()))))
    assert len(tok) == model.config.vocab_size
    tol = _tolerance(root)
    np.testing.assert_allclose(reference_logits(model, params, ref), ref["logits"],
                               atol=tol["atol"], rtol=tol["rtol"])


def _fake_hf_cache(home, repo_id, src):
    """The huggingface_hub cache layout: models--org--name/{refs/main, snapshots/<rev>/...}."""
    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    rev = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(src, repo / "snapshots" / rev)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    return repo / "snapshots" / rev


def test_hf_id_from_local_cache(fixtures_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fake_hf_cache(tmp_path / "hf_home", "fairjax-test/gpt2-tiny", fixtures_dir / "gpt2_tiny" / "hf")
    model, params, tok = load("fairjax-test/gpt2-tiny")
    _, want = load_hf_dir(fixtures_dir / "gpt2_tiny" / "hf")
    assert_trees_equal(params, want)
    assert model.config.kind == "gpt2" and tok.eos_id == tok.special_ids["</s>"]
    with pytest.raises(FileNotFoundError, match=r"hf download fairjax-test/absent-model"):
        load("fairjax-test/absent-model")


def test_missing_paths_have_clear_errors(fixtures_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "nope.pkl", base=fixtures_dir / "gpt2_tiny" / "hf")
    with pytest.raises(FileNotFoundError, match="not a Hugging Face directory"):
        load(tmp_path)
    with pytest.raises(ValueError, match="needs base=HF_DIR"):
        load(fixtures_dir / "gpt2_tiny" / "bc_model.pkl")


def test_base_without_layout_tokens_gets_resized(fixtures_dir, tmp_path):
    """An HF model whose tokenizer lacks the six layout tokens (e.g. stock `gpt2`): the wrapper
    adds them and the embedding gets one mean-initialised row each."""
    src = fixtures_dir / "gpt2_tiny" / "hf"
    n_base = len(json.loads((fixtures_dir / "tokenizer" / "vocab.json").read_text()))
    cfg = json.loads((src / "config.json").read_text())
    cfg["vocab_size"] = n_base
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(cfg))
    sd = read_hf_state_dict(src)
    sd["transformer.wte.weight"] = sd["transformer.wte.weight"][:n_base].copy()
    write_safetensors(base / "model.safetensors", sd)
    for f in (fixtures_dir / "tokenizer").iterdir():
        shutil.copy(f, base / f.name)
    model, params, tok = load(base)
    assert len(tok) == model.config.vocab_size == n_base + 6
    wte = params["wte"]["embedding"]
    np.testing.assert_array_equal(wte[:n_base], sd["transformer.wte.weight"])
    np.testing.assert_allclose(wte[tok.pad_id], sd["transformer.wte.weight"].mean(0), rtol=1e-5)


def test_model_dir_round_trip_and_chat_flag(fixtures_dir, tmp_path):
    config, params = load_hf_dir(fixtures_dir / "llama_tiny" / "hf")
    tok = Tokenizer.from_dir(fixtures_dir / "llama_tiny" / "hf")
    tok.hf.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    chat_tok = Tokenizer(tok.hf, use_chat_template=True)
    out = save_model_dir(tmp_path / "m", config, params, chat_tok, extra_meta={"note": "x"})
    cfg2, p2, t2 = load_model_dir(out)
    assert cfg2 == config and t2.use_chat_template
    assert_trees_equal(p2, params)
    meta = json.loads((out / "fairjax_model.json").read_text())
    assert meta["meta"] == {"note": "x"} and meta["config"]["model_type"] == "llama"
    bad = dict(params, norm={"weight": np.ones(3, np.float32)})
    with pytest.raises(CheckpointMismatchError, match=r"norm/weight: expected \[\d+\], got \[3\]"):
        save_model_dir(tmp_path / "bad", config, bad, tok)
    assert not (tmp_path / "bad").exists()


def test_run_dir_restores_latest_policy(fixtures_dir, tmp_path):
    import orbax.checkpoint as ocp

    config, params = load_hf_dir(fixtures_dir / "gpt2_tiny" / "hf")
    tok = Tokenizer.from_dir(fixtures_dir / "gpt2_tiny" / "hf")
    run = tmp_path / "run"
    save_model_dir(run / "model", config, params, tok)
    import jax

    plus = lambda d: jax.tree.map(lambda x: np.asarray(x) + d, params)  # noqa: E731
    mgr = ocp.CheckpointManager(run / "checkpoints")
    for step, d in ((1, 1.0), (2, 2.0)):
        state = {"params": {"policy": plus(d), "qv": plus(-d)}, "opt_state": {"mu": plus(9.0)},
                 "step": np.asarray(step)}
        mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    mgr.wait_until_finished()
    model, got, tok2 = load(run)
    assert_trees_equal(got, plus(2.0))
    assert len(tok2) == len(tok)
    from fairjax.io.checkpoint import load_run_dir
    assert_trees_equal(load_run_dir(run, step=1)[1], plus(1.0))
    with pytest.raises(FileNotFoundError, match=r"no step 7; available: \[1, 2\]"):
        load_run_dir(run, step=7)


def test_find_lm_params_prefers_policy_and_reports_absence(fixtures_dir, tmp_path):
    config, params = load_hf_dir(fixtures_dir / "gpt2_tiny" / "hf")
    tree = {"opt_state": {"mu": params}, "frozen": {"target": params}, "trainable": {"policy": params}}
    path, _ = find_lm_params(tree, config)
    assert path == ("trainable", "policy")
    with pytest.raises(CheckpointMismatchError, match="no sub-tree matches"):
        find_lm_params({"x": {"wte": params["wte"]}}, config)
    save_pytree(tmp_path / "p", {"a": params["ln_f"]})
    assert_trees_equal(restore_pytree(tmp_path / "p"), {"a": params["ln_f"]})
    with pytest.raises(FileExistsError):
        save_pytree(tmp_path / "p", {"a": params["ln_f"]})
