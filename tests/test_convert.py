"""fairjax.convert: .pkl/HF -> fairjax/HF/upstream, logits vs PyTorch, mismatch errors, no overwrite."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from absl import flags

from fairjax.cli import convert as convert_cli
from fairjax.convert import convert
from fairjax.io.tokenizer import VocabMismatchError
from fairjax.errors import CheckpointMismatchError
from fairjax.io.hf import read_hf_state_dict
from fairjax.io.torch_pickle import load_torch_pickle, save_torch_pickle
from fairjax.runs import load
from model_helpers import assert_trees_equal, reference_logits

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpt2(fixtures_dir):
    root = fixtures_dir / "gpt2_tiny"
    meta = json.loads((root / "meta.json").read_text())
    return root, np.load(root / "reference.npz"), meta["suggested_tolerances"]["logits"]


@pytest.fixture(scope="module")
def bc_fairjax_dir(gpt2, tmp_path_factory):
    root, _, _ = gpt2
    out = tmp_path_factory.mktemp("conv") / "bc_fairjax"
    convert(str(root / "bc_model.pkl"), str(out), base=str(root / "hf"))
    return out


def test_bc_pkl_to_fairjax_matches_pytorch_logits(gpt2, bc_fairjax_dir):
    root, ref, tol = gpt2
    assert sorted(os.listdir(bc_fairjax_dir)) == ["fairjax_model.json", "params", "tokenizer"]
    meta = json.loads((bc_fairjax_dir / "fairjax_model.json").read_text())
    assert meta["kind"] == "gpt2" and meta["format_version"] == 1
    model, params, tok = load(bc_fairjax_dir)
    assert len(tok) == model.config.vocab_size == ref["logits"].shape[-1]
    logits = reference_logits(model, params, ref)
    np.testing.assert_allclose(logits, ref["logits"], atol=min(tol["atol"], 1e-4), rtol=tol["rtol"])


def test_fairjax_to_hf_round_trip_exact(gpt2, bc_fairjax_dir, tmp_path):
    root, _, _ = gpt2
    hf_out = tmp_path / "hf"
    convert(str(bc_fairjax_dir), str(hf_out), to="hf")
    # the exported safetensors equal the original HF weights bit for bit
    orig, back = read_hf_state_dict(root / "hf"), read_hf_state_dict(hf_out)
    assert set(back) == set(orig)
    for k in orig:
        np.testing.assert_array_equal(back[k], orig[k], err_msg=k)
    _, p1, t1 = load(bc_fairjax_dir)
    _, p2, t2 = load(hf_out)
    assert_trees_equal(p1, p2)
    assert t2.special_ids == t1.special_ids and len(t2) == len(t1)
    # hf -> fairjax -> hf again is exact too
    again = tmp_path / "fj"
    convert(str(hf_out), str(again))
    assert_trees_equal(load(again)[1], p1)


def test_llama_hf_fairjax_round_trip(fixtures_dir, tmp_path):
    src = fixtures_dir / "llama_tiny" / "hf"
    convert(str(src), str(tmp_path / "fj"), dtype="bfloat16")
    model, params, _ = load(tmp_path / "fj")
    assert model.config.dtype == "bfloat16"
    convert(str(tmp_path / "fj"), str(tmp_path / "hf"), to="hf")
    orig, back = read_hf_state_dict(src), read_hf_state_dict(tmp_path / "hf")
    assert set(orig) == set(back)
    for k in orig:
        np.testing.assert_array_equal(back[k], orig[k], err_msg=k)


def test_upstream_bc_export(gpt2, bc_fairjax_dir, tmp_path):
    root, _, _ = gpt2
    out = convert(str(bc_fairjax_dir), str(tmp_path / "up"), to="upstream_bc")
    assert out.name == "model.pkl"
    sd, orig = load_torch_pickle(out), load_torch_pickle(root / "bc_model.pkl")
    assert set(orig) <= set(sd)
    for k in orig:
        np.testing.assert_array_equal(sd[k], orig[k], err_msg=k)
    # the vendored-4.16 buffers are added so upstream's strict load_state_dict accepts it
    extra = set(sd) - set(orig)
    assert extra and all(k.endswith(("attn.bias", "attn.masked_bias")) for k in extra)
    assert np.shares_memory(sd["model.lm_head.weight"], sd["model.transformer.wte.weight"])


def _mutated_pkl(root, tmp_path, fn, name="bad.pkl"):
    sd = dict(load_torch_pickle(root / "bc_model.pkl"))
    fn(sd)
    path = tmp_path / name
    save_torch_pickle(path, sd)
    return path


def test_missing_key_is_listed(gpt2, tmp_path):
    root, _, _ = gpt2
    bad = _mutated_pkl(root, tmp_path, lambda sd: sd.pop("model.transformer.h.1.ln_2.bias"))
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(1\): transformer\.h\.1\.ln_2\.bias"):
        convert(str(bad), str(tmp_path / "out"), base=str(root / "hf"))
    assert not (tmp_path / "out").exists()


def test_wrong_shape_and_unexpected_key_are_listed(gpt2, tmp_path):
    root, _, _ = gpt2

    def mutate(sd):
        w = sd["model.transformer.h.0.mlp.c_fc.weight"]
        sd["model.transformer.h.0.mlp.c_fc.weight"] = w[:, :-1].copy()
        sd["model.transformer.extra.weight"] = np.zeros(3, np.float32)

    bad = _mutated_pkl(root, tmp_path, mutate)
    w = load_torch_pickle(root / "bc_model.pkl")["model.transformer.h.0.mlp.c_fc.weight"].shape
    with pytest.raises(CheckpointMismatchError) as e:
        convert(str(bad), str(tmp_path / "out"), base=str(root / "hf"))
    msg = str(e.value)
    assert "transformer.extra.weight" in msg
    assert f"transformer.h.0.mlp.c_fc.weight: expected {list(w)}, got {[w[0], w[1] - 1]}" in msg


def test_wrong_vocab_fails_clearly(gpt2, tmp_path):
    root, _, _ = gpt2
    cfg = json.loads((root / "hf" / "config.json").read_text())
    n = cfg["vocab_size"] - 2
    base = tmp_path / "base"
    shutil.copytree(root / "hf", base)
    cfg["vocab_size"] = n
    (base / "config.json").write_text(json.dumps(cfg))

    def shrink(sd):
        for k in ("model.transformer.wte.weight", "model.lm_head.weight"):
            sd[k] = sd[k][:n].copy()
        sd["model.lm_head.weight"] = sd["model.transformer.wte.weight"]

    bad = _mutated_pkl(root, tmp_path, shrink)
    with pytest.raises(VocabMismatchError, match=f"vocab_size={n} but tokenizer .* has {n + 2} tokens"):
        convert(str(bad), str(tmp_path / "out"), base=str(base))
    assert not (tmp_path / "out").exists()


def test_output_not_overwritten(gpt2, bc_fairjax_dir, tmp_path):
    root, _, _ = gpt2
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty"):
        convert(str(root / "bc_model.pkl"), str(out), base=str(root / "hf"))
    assert os.listdir(out) == ["keep.txt"]
    convert(str(root / "bc_model.pkl"), str(out), base=str(root / "hf"), overwrite=True)
    assert "keep.txt" not in os.listdir(out) and "fairjax_model.json" in os.listdir(out)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp leftovers
    up = tmp_path / "model.pkl"
    up.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        convert(str(bc_fairjax_dir), str(up), to="upstream_bc")
    assert up.read_bytes() == b"old"


def test_cli_main_reports_errors(gpt2, tmp_path, capsys):
    root, _, _ = gpt2
    argv = ["convert", f"--source={root / 'bc_model.pkl'}", f"--output={tmp_path / 'o'}"]
    convert_cli.define_flags()
    try:
        flags.FLAGS(argv)
        with pytest.raises(ValueError, match="needs base=HF_DIR") as err:  # no --base for a .pkl
            convert_cli.main(["convert"])
        from fairjax import cli

        assert cli.is_user_error(err.value)  # -> one `error:` line, exit 2 (tests/cli/test_errors.py)
        flags.FLAGS(argv + [f"--base={root / 'hf'}", "--to=hf"])
        convert_cli.main(["convert"])
        assert (tmp_path / "o" / "model.safetensors").is_file()
        assert "exported: the language model of" in capsys.readouterr().out
    finally:
        flags.FLAGS.unparse_flags()


def test_cli_subprocess_smoke(gpt2, tmp_path):
    root, _, _ = gpt2
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "fairjax.convert", f"--source={root / 'bc_model.pkl'}",
           f"--base={root / 'hf'}", f"--output={tmp_path / 'fj'}"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "fj" / "fairjax_model.json").is_file() and "wrote fairjax" in res.stdout
