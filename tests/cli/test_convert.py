"""`python -m fairjax.convert` exports: HF token ids come from the tokenizer, the command names the
exported trunk, `--to=peft` loads with peft itself onto the exported base, stderr stays clean."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainer_fixtures import small_config

REPO = Path(__file__).resolve().parents[2]

# lines that used to appear on every command (see issue 15)
NOISE = ("PyTorch was not found", "directory is read only", "read_only=True", "orbax-checkpoint version",
         "Unable to initialize backend")


def _cli(*args, block_torch=False, tmp_path=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    if block_torch:  # as on a machine without PyTorch: transformers then prints its banner
        site = tmp_path / "no_torch"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
        env["PYTHONPATH"] = f"{site}{os.pathsep}{REPO}"
    return subprocess.run([sys.executable, "-m", "fairjax.convert", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=600)


def _assert_quiet(stderr):
    bad = [ln for ln in stderr.splitlines()
           if any(n in ln for n in NOISE) or re.match(r"[IW]\d{4} \d\d:\d\d", ln)]  # absl INFO/WARNING
    assert not bad, bad


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A tiny BC run with LoRA adapters (demo corpus, 1,000-token demo vocabulary)."""
    from fairjax.train.build import train

    run = tmp_path_factory.mktemp("lora") / "run"
    cfg = small_config("bc", **{"train.steps": 4, "train.eval_every": 0, "train.save_every": 4,
                                "optim.lr": 3e-2, "lora.enabled": True, "lora.rank": 4})
    train(cfg, run)
    return run


@pytest.mark.slow
def test_hf_export_ids_are_the_tokenizers(lora_run, tmp_path):
    import transformers

    res = _cli(f"--source={lora_run}", f"--output={tmp_path / 'hf'}", "--to=hf",
               block_torch=True, tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "exported: the bc policy LM (LoRA adapters merged into the base) of run" in res.stdout
    _assert_quiet(res.stderr)
    conf = json.loads((tmp_path / "hf" / "config.json").read_text())
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert conf["vocab_size"] == len(tok) == 1000
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert conf[key] == gen[key] == getattr(tok, key), key
        assert 0 <= conf[key] < conf["vocab_size"], key
    assert conf["eos_token_id"] != 50256


def test_hf_export_without_tokenizer_drops_out_of_vocab_ids():
    from fairjax.io.hf import hf_config_dict
    from fairjax.models import gpt2

    cfg = gpt2.PRESETS["tiny"]
    assert cfg.bos_token_id == 50256 > cfg.vocab_size  # GPT-2's defaults in a tiny vocabulary
    d = hf_config_dict(cfg)
    assert d["bos_token_id"] is None and d["eos_token_id"] is None


@pytest.mark.slow
def test_peft_export_loads_in_peft_and_matches_fairjax(lora_run, tmp_path):
    import jax
    import peft  # test-only oracles (requirements-test.txt)
    import torch
    import transformers
    from safetensors.numpy import load_file

    from fairjax.runs import load

    out = tmp_path / "peft"
    res = _cli(f"--source={lora_run}", f"--output={out}", "--to=peft")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "exported: the LoRA adapters of the bc run" in res.stdout
    _assert_quiet(res.stderr)
    tensors = load_file(str(out / "adapter_model.safetensors"))
    assert any(np.abs(v).max() > 0 for k, v in tensors.items() if "lora_B" in k)  # B trained
    base = transformers.AutoModelForCausalLM.from_pretrained(out / "base", attn_implementation="eager")
    model = peft.PeftModel.from_pretrained(base, out).eval()
    ids = np.random.default_rng(0).integers(0, 990, (2, 12)).astype(np.int64)
    with torch.no_grad():
        theirs = model(input_ids=torch.from_numpy(ids)).logits.numpy()
        plain = base.__class__.from_pretrained(out / "base").eval()(
            input_ids=torch.from_numpy(ids)).logits.numpy()
    fj_model, fj_params, _ = load(lora_run)  # the run's policy: base + adapters, merged
    ours = np.asarray(jax.jit(fj_model.apply)({"params": fj_params}, ids.astype(np.int32)).logits)
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4)
    assert np.abs(plain - ours).max() > 1e-3  # the adapters matter: the base alone differs
