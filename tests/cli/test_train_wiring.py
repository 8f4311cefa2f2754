"""`python -m fairjax.train` reaches QLoRA (`lora.quant`) and bf16 master weights
(`optim.param_dtype`): the config keys validate, build the LoRA config / cast the params, and a
few BC steps on the tiny demo config train what they should."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax import cli
from fairjax.errors import ConfigError
from fairjax.models import lora as L
from fairjax.optim import MasterState

from cli_helpers import run_cli as _run
from trainer_fixtures import small_config

FAST = {"train.steps": 3, "train.eval_every": 0, "train.save_every": 3, "train.log_every": 1}


def _flat(tree) -> dict:
    return {L.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=L._is_q)[0]}


def test_bad_lora_quant_fails_at_validation_naming_the_key(tmp_path):
    from fairjax.train.build import train

    cfg = small_config("bc", **{"lora.enabled": True, "lora.quant": "int4"})
    with pytest.raises(ConfigError, match=r"config\.lora\.quant='int4'.*'int8'.*'nf4'"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    cfg = small_config("bc", **{"optim.param_dtype": "float16"})
    with pytest.raises(ConfigError, match=r"config\.optim\.param_dtype='float16'.*'bfloat16'"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cli_bad_lora_quant_is_one_line_and_leaves_nothing(tmp_path):
    run_dir = tmp_path / "run"
    res = _run("train", "--config=configs/bc.py", f"--run_dir={run_dir}",
               "--config.lora.enabled=True", "--config.lora.quant=nf5", tmp_path=tmp_path)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == cli.EXIT_USER_ERROR, res.stderr[-3000:]
    assert len(lines) == 1 and "config.lora.quant='nf5'" in lines[0], res.stderr[-3000:]
    assert "nf4" in lines[0] and not run_dir.exists()


def test_registry_lora_config_carries_every_key():
    from fairjax.agents.registry import lora_config

    cfg = small_config("bc", **{"lora.rank": 4, "lora.alpha": 8.0, "lora.dropout": 0.1,
                                "lora.targets": "c_attn", "lora.quant": "nf4"})
    assert lora_config(cfg) == L.LoraConfig(rank=4, alpha=8.0, dropout=0.1, targets="c_attn",
                                            quant="nf4")


def test_qlora_int8_bc_trains_only_adapters(tmp_path):
    from fairjax.io.checkpoint import load_model_dir
    from fairjax.runs import restore_run
    from fairjax.train.build import train

    cfg = small_config("bc", **FAST, **{"lora.enabled": True, "lora.rank": 4,
                                        "lora.quant": "int8"})
    res = train(cfg, tmp_path)
    assert res.step == 3 and np.isfinite(res.metrics["loss"])
    run = restore_run(tmp_path, "latest")
    params = _flat(run.params)
    assert params and all(k.endswith(("/a", "/b")) for k in params), sorted(params)
    assert all(v.shape[-1] == 4 or v.shape[0] == 4 for v in params.values())
    assert any(float(jnp.abs(v).max()) > 0 for k, v in params.items() if k.endswith("/b"))
    # the frozen base holds int8 kernels (qwix), equal to quantising the saved initial weights
    base = _flat(res.state["frozen"])
    q = [v for v in base.values() if L._is_q(v)]
    assert q and all(v.qvalue.dtype == jnp.int8 for v in q)
    _, init_params, _ = load_model_dir(tmp_path / "model")
    expect = _flat(L.quantize_base(init_params, "int8", "float32"))
    for k, v in base.items():
        k0 = k.split("/", 1)[1] if k not in expect else k
        np.testing.assert_array_equal(np.asarray(jax.tree.leaves(v)[0]),
                                      np.asarray(jax.tree.leaves(expect[k0])[0]))


def test_bf16_params_train_with_float32_master_weights(tmp_path):
    from fairjax.train.build import train

    cfg = small_config("bc", **FAST, **{"optim.param_dtype": "bfloat16"})
    res = train(cfg, tmp_path)
    assert res.step == 3 and np.isfinite(res.metrics["loss"])
    params = res.state["params"]
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    opt = res.state["opt_state"]
    assert isinstance(opt, MasterState)
    assert {x.dtype for x in jax.tree.leaves(opt.master)} == {jnp.dtype(jnp.float32)}
    # the bf16 params are the master weights rounded (within one bf16 ulp: p + (m - p) is
    # rounded in float32 before the cast), and training moved the master weights
    for m, p in zip(jax.tree.leaves(opt.master), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(p, np.float32), np.asarray(m), rtol=2 ** -7,
                                   atol=1e-30)
    from fairjax.io.checkpoint import load_model_dir

    _, init_params, _ = load_model_dir(tmp_path / "model")
    moved = [not np.allclose(np.asarray(m), np.asarray(i), atol=1e-6)
             for m, i in zip(jax.tree.leaves(opt.master), jax.tree.leaves(init_params))]
    assert any(moved)
    # the run restores (evaluate / convert / init.policy read it) with the trained values
    from fairjax.runs import restore_run

    run = restore_run(tmp_path, "latest")
    for r, p in zip(jax.tree.leaves(run.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(r, np.float32), np.asarray(p, np.float32))
