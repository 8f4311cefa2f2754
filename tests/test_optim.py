"""fairjax/optim.py: the `optim` block as a typed `OptimConfig` (converted once, checked by its
own __post_init__), and the schedule / optimizer built from it."""
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from fairjax import optim
from fairjax.errors import ConfigError
from fairjax.typed_config import field_names, typed_block

from trainer_fixtures import load_config


def _block(**kw):
    """configs/common.py's optim block with `kw` set (a ConfigDict, as the run config holds it)."""
    block = load_config("bc").optim
    block.unlock()
    block.update(kw)
    return block


def test_optim_config_has_every_field_of_the_shipped_block():
    block = load_config("bc").optim
    assert field_names(optim.OptimConfig) == set(block.keys())
    typed = typed_block(block, optim.OptimConfig, "optim")
    assert {k: getattr(typed, k) for k in block.keys()} == block.to_dict()
    assert typed_block(typed, optim.OptimConfig, "optim") is typed  # converted once: kept as is


def test_unknown_optim_field_names_config_optim_field():
    block = _block()
    block.unlock()
    block.momentum = 0.9
    with pytest.raises(ConfigError, match=r"config\.optim\.momentum: unknown field.*'lr'"):
        typed_block(block, optim.OptimConfig, "optim")


@pytest.mark.parametrize("field,value,match", [
    ("schedule", "cyclic", r"config\.optim\.schedule='cyclic'; expected one of \['cosine'"),
    ("param_dtype", "fp8", r"config\.optim\.param_dtype='fp8'.*'bfloat16'"),
    ("lr", 0.0, r"config\.optim\.lr=0\.0; expected > 0"),
    ("grad_accum", 0, r"config\.optim\.grad_accum=0"),
    ("warmup_steps", -1, r"config\.optim\.warmup_steps=-1; expected >= 0"),
    ("b2", 1.0, r"config\.optim\.b1/b2=0\.9/1\.0"),
])
def test_bad_optim_values_name_config_optim(field, value, match):
    with pytest.raises(ConfigError, match=match):
        typed_block(_block(**{field: value}), optim.OptimConfig, "optim")
    with pytest.raises(ConfigError, match=match):  # the dataclass checks itself however built
        optim.OptimConfig(**{field: value})


def test_make_optimizer_and_schedule_take_only_the_typed_block():
    block = _block()
    with pytest.raises(TypeError, match=r"make_optimizer takes the typed OptimConfig.*ConfigDict"):
        optim.make_optimizer(block, 10)
    with pytest.raises(TypeError, match="OptimConfig"):
        optim.make_schedule(ConfigDict(block.to_dict()), 10)
    typed = typed_block(block, optim.OptimConfig, "optim")
    tx = optim.make_optimizer(typed, 10)
    state = tx.init({"w": jnp.ones((2, 2))})
    assert state is not None


def test_schedule_warms_up_then_decays_to_the_end_ratio():
    o = optim.OptimConfig(lr=1.0, warmup_steps=4, end_lr_ratio=0.1, schedule="linear")
    s = optim.make_schedule(o, 14)
    np.testing.assert_allclose([float(s(i)) for i in (0, 2, 4, 14)], [0.0, 0.5, 1.0, 0.1],
                               atol=1e-6)
    flat = optim.make_schedule(optim.OptimConfig(lr=0.5, warmup_steps=0, schedule="constant"), 9)
    assert float(flat(0)) == float(flat(8)) == 0.5
