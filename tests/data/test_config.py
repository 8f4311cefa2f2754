"""fairjax/data/config.py: the `config.data` block as a typed DataConfig (unknown fields and bad
values name the key, older run configs load with defaults) and the Batching record."""
import json

import pytest
from ml_collections import ConfigDict

from fairjax.data import jobs
from fairjax.data.config import Batching, DataConfig
from fairjax.errors import ConfigError
from fairjax.io import run_dir as rd
from fairjax.train.build import data_inputs, validate_config
from fairjax.typed_config import field_names

from trainer_fixtures import load_config

NAMES = ("bc", "ilql", "alol", "phf", "dpo", "grpo", "rloo", "ppo", "rest")


@pytest.mark.parametrize("name", NAMES)
def test_every_data_field_of_the_shipped_configs_is_typed_with_the_same_default(name):
    cfg = load_config(name)
    assert set(cfg.data.keys()) == field_names(DataConfig)
    data = DataConfig.from_block(cfg.data)
    assert data == DataConfig()  # a field an old config lacks takes the shipped value
    assert isinstance(data.buckets, tuple) and hash(data)  # frozen, hashable


def test_the_eval_config_data_block_is_a_subset():
    cfg = load_config("eval")
    data = DataConfig.from_block(cfg.data)
    assert (data.eval, data.text_field, data.on_error) == (cfg.data.eval, cfg.data.text_field,
                                                           cfg.data.on_error)
    assert data.max_len == DataConfig().max_len


def test_an_unknown_data_field_is_named():
    with pytest.raises(ConfigError, match=r"config\.data\.max_length: unknown field"):
        DataConfig.from_block({"max_length": 64})
    cfg = load_config("bc")
    cfg.unlock()
    cfg.data.shuffle_buffer = 100
    with pytest.raises(ConfigError, match=r"config\.data\.shuffle_buffer: unknown field"):
        validate_config(cfg)


@pytest.mark.parametrize("key,value,match", [
    ("on_error", "ignore", r"config\.data\.on_error='ignore'; expected one of \['raise', 'skip'\]"),
    ("max_len", 0, r"config\.data\.max_len=0; expected an integer > 0"),
    ("demo_postings", -1, r"config\.data\.demo_postings=-1"),
    ("buckets", (64, 32), r"config\.data\.buckets=\(64, 32\); expected increasing"),
    ("buckets", (0, 64), r"config\.data\.buckets=\(0, 64\)"),
    ("task", "my_pkg.tasks", r"config\.data\.task='my_pkg\.tasks': expected 'module:factory'"),
    ("text_field", "", r"config\.data\.text_field is empty"),
])
def test_a_bad_data_value_names_the_key(key, value, match):
    with pytest.raises(ConfigError, match=match):
        DataConfig.from_block({key: value})
    cfg = load_config("bc")
    setattr(cfg.data, key, value)  # ConfigDict keeps the type; these values type-check
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg)


def test_bools_are_checked_when_not_from_a_typed_config_dict():
    for key in ("pack", "shuffle"):
        with pytest.raises(ConfigError, match=rf"config\.data\.{key}='yes'"):
            DataConfig.from_block({key: "yes"})


def test_on_error_choices_are_the_readers():
    """DataConfig takes exactly what the record reader implements (jobs.ON_ERROR)."""
    for mode in jobs.ON_ERROR:
        assert DataConfig(on_error=mode).on_error == mode
    with pytest.raises(ValueError, match="on_error"):
        jobs.read_records("missing.jsonl", on_error="ignore")


def test_an_old_run_config_without_the_newer_data_fields_loads(tmp_path):
    """A run dir saved before data.task / data.shuffle / data.pack existed: their defaults."""
    cfg = load_config("bc")
    d = cfg.to_dict()
    for key in ("task", "shuffle", "pack"):
        del d["data"][key]
    d["data"]["buckets"] = [32, 64, 128]  # JSON holds a list
    d["data"]["max_len"] = 128
    (tmp_path / rd.CONFIG_JSON).write_text(json.dumps(d))
    old = rd.load_config(tmp_path)
    assert "pack" not in old.data
    data = DataConfig.from_block(old.data)
    assert (data.task, data.shuffle, data.pack) == ("", True, False)
    assert data.buckets == (32, 64, 128) and data.max_len == 128
    from fairjax.evaluate import _run_eval_path

    assert _run_eval_path(old, str(tmp_path)) is None  # no demo eval split written there


def test_a_typed_block_passes_through_and_replace_revalidates():
    data = DataConfig(max_len=64, buckets=[64])
    assert DataConfig.from_block(data) is data and data.buckets == (64,)
    assert data.replace(on_error="skip").on_error == "skip"
    with pytest.raises(ConfigError, match="config.data.on_error"):
        data.replace(on_error="drop")
    with pytest.raises(Exception):
        data.max_len = 32  # frozen


def test_data_inputs_converts_the_data_block_and_the_batching_fields():
    cfg = load_config("bc")
    cfg.optim.batch_size, cfg.optim.grad_accum, cfg.seed = 4, 3, 7
    cfg.data.max_len = 256
    data, batching = data_inputs(cfg)
    assert data.max_len == 256 and batching == Batching(batch_size=4, grad_accum=3, seed=7)
    assert batching.rows_per_step == 12
    with pytest.raises(ConfigError, match=r"config\.optim\.grad_accum=0"):
        Batching(batch_size=4, grad_accum=0)


def test_a_config_dict_block_converts_like_a_mapping():
    """A ConfigDict block (not a mapping) converts the same way."""
    block = ConfigDict({"train": "a.jsonl", "max_len": 96, "buckets": (96,)})
    data = DataConfig.from_block(block)
    assert (data.train, data.max_len, data.buckets, data.pack) == ("a.jsonl", 96, (96,), False)
