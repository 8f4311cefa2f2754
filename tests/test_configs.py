"""configs/*.py: every config loads, validates, rejects bad keys/types/values, relaunches."""
import os
import subprocess
import sys

import importlib.util

import pytest

from fairjax.io import run_dir as rd
from fairjax.errors import ConfigError
from fairjax.train.build import validate_config

from trainer_fixtures import REPO, load_config

NAMES = ("bc", "ilql", "alol", "phf", "dpo", "grpo", "rloo", "ppo")


@pytest.mark.parametrize("name", NAMES)
def test_config_loads_validates_and_is_locked(name):
    cfg = load_config(name)
    assert cfg.algorithm == name
    validate_config(cfg)
    with pytest.raises(AttributeError):
        cfg.optim.no_such_key = 1
    with pytest.raises(TypeError):
        cfg.optim.lr = "fast"


def test_ilql_defaults_are_the_fms_at_work_hackernews_values():
    c = load_config("ilql").ilql
    assert (c.gamma, c.tau, c.alpha, c.cql_weight, c.awac_weight, c.v_weight, c.q_weight,
            c.dm_weight, c.beta) == (0.99, 0.6, 0.005, 0.25, 0.0, 1.0, 1.0, 0.0, 0.0)
    assert c.double_q and c.separate_policy and c.separate_target and c.exp_weights
    assert c.generation.adv_weight == 8.0


@pytest.mark.parametrize("key,value,match", [
    ("ilql.tau", 1.5, "expectile"), ("optim.schedule", "cyclic", "optim.schedule"),
    ("optim.batch_size", 0, "optim.batch_size"), ("data.buckets", (64, 32), "buckets"),
    ("algorithm", "reinforce", "algorithm"), ("init.step", "first", "init.step"),
    ("mesh.impl", "pmap", "mesh.impl")])
def test_validate_rejects_bad_values(key, value, match):
    cfg = load_config("ilql")
    node, leaf = cfg, key.split(".")
    for p in leaf[:-1]:
        node = getattr(node, p)
    setattr(node, leaf[-1], value)
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg)


def test_shard_map_impl_is_validated():
    cfg = load_config("bc")
    cfg.mesh.impl = "shard_map"
    validate_config(cfg)
    cfg.mesh.tensor = 2
    with pytest.raises(ConfigError, match="mesh.tensor"):
        validate_config(cfg)


def test_alol_and_phf_variants_are_selectable():
    cfg = load_config("alol")
    cfg.alol.algorithm = "a_lol_seq"
    validate_config(cfg)
    cfg.alol.algorithm = "a_lol_typo"
    with pytest.raises(ConfigError, match="alol.algorithm"):
        validate_config(cfg)
    cfg = load_config("phf")
    for objective in ("filter", "conditional", "ul", "awr", "rwr"):
        cfg.phf.objective = objective
        validate_config(cfg)


def test_saved_config_py_relaunches_the_same_config(tmp_path):
    cfg = load_config("ilql")
    cfg.optim.lr = 1.25e-4
    rd.save_config(cfg, tmp_path)
    spec_cfg = importlib.util.spec_from_file_location("resolved", tmp_path / "config.py")
    mod = importlib.util.module_from_spec(spec_cfg)
    spec_cfg.loader.exec_module(mod)
    again = mod.get_config()
    assert again.to_dict() == cfg.to_dict()
    assert rd.load_config(tmp_path).to_dict() == cfg.to_dict()
    with pytest.raises(AttributeError):
        again.bogus = 1


def test_cli_fails_on_unknown_key_before_any_work(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "fairjax.train", "--config=configs/bc.py",
                           f"--run_dir={run}", "--config.optim.no_such=1"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "no_such" in proc.stderr
    assert not run.exists()
    proc = subprocess.run([sys.executable, "-m", "fairjax.train", "--config=configs/bc.py",
                           f"--run_dir={run}", "--config.optim.lr=fast"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and not run.exists()


CONFIG_IMPORTS = {"fairjax", "fairjax.stages", "fairjax.config_files"}  # leaves, no runtime


def test_configs_load_with_no_fairjax_runtime_module():
    """Every configs/*.py loads (as ml_collections loads it, by path) with nothing of fairjax
    imported but the two leaves they may read, and no config carries importlib lines of its own."""
    script = (
        "import sys\nfrom ml_collections import config_flags\nfrom absl import flags\n"
        "config_flags.DEFINE_config_file('config')\n"
        "for name in sys.argv[1:]:\n"
        "    flags.FLAGS(['x', f'--config=configs/{name}.py'])\n"
        "    assert flags.FLAGS.config.to_dict()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'fairjax'))\n")
    names = sorted(p.stem for p in (REPO / "configs").glob("*.py") if p.stem != "common")
    proc = subprocess.run([sys.executable, "-c", script, *names], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = set(eval(proc.stdout.strip().splitlines()[-1]))  # noqa: S307 - our own print
    assert loaded <= CONFIG_IMPORTS, loaded - CONFIG_IMPORTS
    assert {"fairjax.config_files", "fairjax.stages"} <= loaded  # the check sees their imports
    for path in (REPO / "configs").glob("*.py"):
        assert "importlib" not in path.read_text(), f"{path}: load siblings with config_files.sibling"
