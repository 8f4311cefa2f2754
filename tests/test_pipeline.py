"""The one-command workflow: BC -> ILQL from the BC policy -> evaluation, resumable."""
import json

import pytest

from fairjax import pipeline
from trainer_fixtures import small_config


@pytest.mark.slow
def test_bc_then_ilql_then_evaluation(tmp_path):
    cfg = small_config("ilql", **{"train.steps": 4, "pipeline.bc_steps": 4,
                                  "pipeline.eval_limit": 4, "pipeline.eval_n_boot": 20,
                                  "pipeline.adv_weights": (8.0,), "eval.max_new_tokens": 6})
    out = pipeline.run(cfg, str(tmp_path))
    assert out["bc"].step == 4 and out["train"].step == 4
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["init"]["policy"] == str(tmp_path / "bc")  # ILQL started from the BC policy
    assert set(out["eval"]["systems"]) == {"original", "bc", "ilql_b8"}
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


@pytest.mark.parametrize("algo", ["bc", "ilql"])
def test_eval_generate_reports_reward_of_generations(tmp_path, algo):
    from fairjax import trainer

    cfg = small_config(algo, **{"train.steps": 2, "train.eval_every": 2, "eval.generate": True,
                                "eval.num_prompts": 3, "eval.max_new_tokens": 5})
    trainer.train(cfg, tmp_path)
    evals = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()
             if json.loads(l).get("split") == "eval"]
    assert evals and all(k in evals[-1] for k in ("gen_reward", "gen_new_tokens", "gen_finished"))
    assert 1 <= evals[-1]["gen_new_tokens"] <= 5
