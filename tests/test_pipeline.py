"""The one-command workflow: BC -> ILQL from the BC policy -> evaluation, resumable."""
import json

import pytest

from fairjax import pipeline
from fairjax.errors import ConfigError
from trainer_fixtures import load_config, small_config


@pytest.mark.slow
def test_bc_then_ilql_then_evaluation(tmp_path):
    cfg = small_config("ilql", **{"train.steps": 4, "pipeline.bc_steps": 4,
                                  "pipeline.eval_limit": 4, "pipeline.eval_n_boot": 20,
                                  "pipeline.adv_weights": (8.0,), "pipeline.eval_max_new_tokens": 6})
    out = pipeline.run(cfg, str(tmp_path))
    assert out["bc"].step == 4 and out["train"].step == 4
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["init"]["policy"] == str(tmp_path / "bc")  # ILQL started from the BC policy
    assert set(out["eval"]["systems"]) == {"original", "bc", "ilql_b8", "lexicon_swap",
                                          "inclusion_statement"}  # + the default baselines
    assert (tmp_path / "eval" / "report" / "report.md").is_file()
    rows = (tmp_path / "eval" / "eval_logs.jsonl").read_text().splitlines()
    assert len(rows) == 4
    # the BC stage shares the tokenizer/model dir lineage with the ILQL run
    assert (tmp_path / "bc" / "model").is_dir() and (tmp_path / "model").is_dir()
    # re-running resumes every stage: nothing retrains, the log is untouched
    again = pipeline.run(cfg, str(tmp_path))
    assert again["train"].step == 4
    assert (tmp_path / "eval" / "eval_logs.jsonl").read_text().splitlines() == rows


def test_stages_off_is_plain_training():
    cfg = small_config("ilql", **{"pipeline.bc_warm_start": False, "pipeline.evaluate": False})
    assert not pipeline.has_stages(cfg)
    assert not pipeline.has_stages(small_config("bc"))
    ev = pipeline.eval_config(small_config("ilql", **{"pipeline.adv_weights": (0.0, 2.0, 8.0)}),
                              pipeline.Path("/r"))
    assert ev.variants == "bc:0,ilql_b2:2,ilql_b8:8" and ev.output_dir == "/r/eval"


def test_stage_configs_come_from_the_saved_config_not_from_files(tmp_path, monkeypatch):
    import builtins
    import importlib.util

    from fairjax.io import run_dir as rd

    cfg = small_config("ilql", **{"pipeline.bc_steps": 7, "pipeline.adv_weights": (2.0,)})
    want_bc = pipeline.bc_config(cfg, tmp_path / "bc")
    want_ev = pipeline.eval_config(cfg, tmp_path)
    rd.save_config(cfg, tmp_path)
    saved = rd.load_config(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError(f"a stage config read a file at run time: {args[:1]}")

    # from here on no configs/*.py (nor any other file) can be read
    monkeypatch.setattr(importlib.util, "spec_from_file_location", refuse)
    monkeypatch.setattr(builtins, "open", refuse)
    bc = pipeline.bc_config(saved, tmp_path / "bc")
    ev = pipeline.eval_config(saved, tmp_path)
    monkeypatch.undo()
    # the run dir's saved config reproduces both stages exactly
    assert bc.to_dict() == want_bc.to_dict() and ev.to_dict() == want_ev.to_dict()
    # BC stage = configs/bc.py + the main run's shared fields + pipeline.bc_*
    ref_bc, ref_ev = load_config("bc"), load_config("eval")
    assert bc.algorithm == "bc" and bc.bc.to_dict() == ref_bc.bc.to_dict()
    assert bc.model.to_dict() == cfg.model.to_dict() and bc.data.to_dict() == cfg.data.to_dict()
    assert bc.train.steps == 7 and bc.optim.lr == cfg.pipeline.bc_lr and bc.run_dir == str(tmp_path / "bc")
    # evaluation stage = configs/eval.py pointed at the run
    # ... judged with the run's own embedder (the tests' small configs: tfidf)
    assert ev.scorer.embedder == cfg.reward.embedder == "tfidf"
    assert ({**ev.scorer.to_dict(), "embedder": ""} == {**ref_ev.scorer.to_dict(), "embedder": ""}
            and ev.data.to_dict() == ref_ev.data.to_dict())
    assert ev.variants == "bc:0,ilql_b2:2" and ev.checkpoint == str(tmp_path)


def test_missing_stage_config_is_a_config_error(tmp_path):
    cfg = small_config("ilql")
    cfg.unlock()
    del cfg["stages"]
    with pytest.raises(ConfigError, match="config.stages.bc"):
        pipeline.bc_config(cfg, tmp_path)


@pytest.mark.parametrize("algo", ["bc", "ilql"])
def test_eval_generate_reports_reward_of_generations(tmp_path, algo):
    from fairjax.train.build import train

    cfg = small_config(algo, **{"train.steps": 2, "train.eval_every": 2, "eval.generate": True,
                                "eval.num_prompts": 3, "eval.max_new_tokens": 5})
    train(cfg, tmp_path)
    evals = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()
             if json.loads(l).get("split") == "eval"]
    assert evals and all(k in evals[-1] for k in ("gen_reward", "gen_new_tokens", "gen_finished"))
    assert 1 <= evals[-1]["gen_new_tokens"] <= 5


def test_online_pipeline_evaluation_sizes_rewrites_from_the_data():
    """The GRPO pipeline's evaluation, like ILQL's, takes max_new_tokens = 0 (from the eval
    postings' lengths), not the 64-token in-training generation setting."""
    from pathlib import Path

    for algo in ("grpo", "rloo", "ppo", "ilql"):
        ev = pipeline.eval_config(small_config(algo), Path("/tmp/run"))
        assert ev.generation.max_new_tokens == 0, algo


def test_online_pipeline_evaluation_samples_as_the_run_did():
    """temperature, top_k and top_p of the online objective reach the evaluation stage."""
    from pathlib import Path

    for algo in ("grpo", "rloo", "ppo"):
        cfg = small_config(algo, **{f"{algo}.temperature": 0.7, f"{algo}.top_k": 5,
                                    f"{algo}.top_p": 0.9})
        g = pipeline.eval_config(cfg, Path("/tmp/run")).generation
        assert (g.temperature, g.top_k, g.top_p) == (0.7, 5, 0.9), algo


def test_offline_pipeline_refuses_preservation_before_bc(tmp_path):
    """A reward offline data cannot give (preservation: every posting its own original) stops the
    pipeline before its BC stage trains."""
    from fairjax.errors import ConfigError

    cfg = small_config("ilql", **{"reward.scorer": "preservation"})
    with pytest.raises(ConfigError, match="reward.scorer='preservation'"):
        pipeline.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "bc").exists()
