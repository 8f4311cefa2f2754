"""Online objectives through `python -m fairjax.train`: config validation names the key, a GRPO
run resumed from its checkpoint equals the uninterrupted run (rollout key and data position
included), and the configs/grpo.py pipeline (BC -> GRPO -> evaluation) writes its evaluation."""
import importlib.util
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from fairjax.errors import ConfigError
from fairjax.train.build import train, validate_config
from trainer_fixtures import set_dotted

REPO = Path(__file__).resolve().parents[2]


def _config(name="grpo", **over):
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", REPO / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.unlock()
    c.optim.batch_size = 4
    c[name].group_size = 2 if name != "ppo" else 1
    c[name].max_prompt_tokens = 48
    c[name].max_new_tokens = 8
    c.train.progress = False
    c.reward.embedder = "tfidf"
    c.train.tensorboard = False
    c.train.async_checkpoint = False
    c.data.demo_postings = 40
    c.data.max_len, c.data.buckets = 128, (64, 128)
    c.pipeline.bc_warm_start = False
    c.pipeline.evaluate = False
    set_dotted(c, over)
    c.lock()
    return c


def test_config_validation_names_the_key():
    validate_config(_config())
    with pytest.raises(ConfigError, match=r"config.grpo.group_size: 3 does not divide "
                                          r"config.optim.batch_size=4"):
        validate_config(_config(**{"grpo.group_size": 3}))
    with pytest.raises(ConfigError, match=r"config.grpo.beta: 0.04 > 0 needs a reference"):
        validate_config(_config(**{"grpo.reference": "none"}))
    with pytest.raises(ConfigError, match=r"config.ppo.beta"):
        validate_config(_config("ppo", **{"ppo.reference": "none"}))
    with pytest.raises(ConfigError, match=r"config.optim.grad_accum=2"):
        validate_config(_config(**{"optim.grad_accum": 2}))
    validate_config(_config("rloo"))
    # the losses' reductions are the shard_map batch collectives: no refusal
    validate_config(_config(**{"mesh.impl": "shard_map"}))
    validate_config(_config("ppo", **{"mesh.impl": "shard_map"}))


@pytest.mark.slow
def test_grpo_resume_equals_uninterrupted_run(tmp_path):
    full = train(_config(**{"train.steps": 3, "train.save_every": 1}), tmp_path / "full")
    train(_config(**{"train.steps": 2, "train.save_every": 1}), tmp_path / "cut")
    resumed = train(_config(**{"train.steps": 3, "train.save_every": 1}), tmp_path / "cut")
    assert resumed.step == full.step == 3
    a, b = jax.device_get(full.state["params"]), jax.device_get(resumed.state["params"])
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)
    rows = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r.get("split", "train") == "train"]
    assert train_rows and all("reward/mean" in json.dumps(r) for r in train_rows)
    for r in train_rows:  # real throughput, not the offline batch count (0 for prompt batches)
        assert r["tokens_per_s"] > 0 and r["rollout_tokens_per_s"] > 0
        assert r["update_tokens_per_s"] > 0
        prompt_tokens = r["tokens"] - 4 * r["completion_length"]  # 4 rows of prompt + completion
        assert 4 * 3 <= prompt_tokens <= 4 * 48  # <s> x </s> at least, max_prompt_tokens at most


@pytest.mark.slow
def test_grpo_pipeline_bc_then_grpo_then_evaluation(tmp_path):
    from fairjax import pipeline

    cfg = _config(**{"train.steps": 2, "pipeline.bc_warm_start": True, "pipeline.bc_steps": 4,
                     "pipeline.evaluate": True, "pipeline.eval_limit": 4,
                     "pipeline.eval_n_boot": 20, "pipeline.eval_max_new_tokens": 8})
    out = pipeline.run(cfg, str(tmp_path / "grpo"))
    assert out["bc"] is not None and out["train"].step == 2
    summary = json.loads((tmp_path / "grpo" / "eval" / "summary.json").read_text())
    names = json.dumps(summary["systems"])
    assert "grpo" in names and "bc" in names
    assert (tmp_path / "grpo" / "eval" / "report" / "report.md").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rloo", "ppo"])
def test_shipped_rloo_and_ppo_configs_train_two_steps(tmp_path, name):
    """configs/rloo.py and configs/ppo.py (tiny settings) train end to end: two logged steps
    with a reward, a checkpoint at step 2 and a summary."""
    res = train(_config(name, **{"train.steps": 2, "train.log_every": 1, "train.eval_every": 0,
                                 "train.save_every": 2}), tmp_path)
    assert res.step == 2
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r.get("split", "train") == "train"]
    assert [r["step"] for r in train_rows] == [1, 2]
    assert all(np.isfinite(r["loss"]) and "reward/mean" in json.dumps(r) for r in train_rows)
    assert (tmp_path / "summary.json").is_file()


@pytest.mark.slow
def test_grpo_with_lora_trains_through_the_loop(tmp_path):
    """`lora.enabled` through `python -m fairjax.train`'s path: the state holds adapter sets over
    the frozen base (+ the reference's copy of the fresh adapters), the producer samples from
    the merged view, two steps train the adapters and leave the base as it was."""
    res = train(_config(**{"train.steps": 2, "train.save_every": 0, "lora.enabled": True,
                           "lora.rank": 2}), tmp_path)
    assert res.step == 2
    params, frozen = jax.device_get(res.state["params"]), jax.device_get(res.state["frozen"])
    assert set(params) == {"policy"} and set(frozen) == {"base", "ref"}
    assert all(set(ad) == {"a", "b"} for ad in params["policy"].values())
    assert any(np.any(ad["b"] != 0) for ad in params["policy"].values())
    assert all(not np.any(ad["b"]) for ad in frozen["ref"].values())
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("reward/mean" in json.dumps(r) for r in rows)
