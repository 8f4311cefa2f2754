"""evaluate.py: every prompt once in order, all fields, summary/report files, crash-resume keeps
finished rows byte-identical, non-run-dir checkpoints (HF dir), config errors."""
import json

import pytest

from fairjax import evaluate as E
from trainer_fixtures import load_config, small_config


@pytest.fixture(scope="module")
def ilql_run(tmp_path_factory):
    from fairjax.train.build import train

    run = tmp_path_factory.mktemp("ilql_run")
    cfg = small_config("ilql", **{"train.steps": 4})
    train(cfg, run)
    return run


def eval_config(checkpoint, out, **overrides):
    c = load_config("eval")
    c.unlock()
    c.checkpoint, c.output_dir = str(checkpoint), str(out)
    c.limit, c.batch_size, c.chunk_batches, c.n_boot = 6, 4, 1, 50
    c.generation.max_new_tokens = 8
    c.variants = "bc:0,ilql:4"
    for k, v in overrides.items():
        node = c
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    c.lock()
    return c


def test_rows_in_order_with_all_fields_and_resume(ilql_run, tmp_path):
    out = tmp_path / "ev"
    summary = E.evaluate(eval_config(ilql_run, out))
    log = out / E.LOG_FILE
    rows = [json.loads(l) for l in log.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(6))
    assert len({r["id"] for r in rows}) == 6
    for r in rows:
        for name in ("original", "bc", "ilql"):
            assert {"text", "reward", "ir_female", "ir_male", "verdict", "has_pii",
                    "n_chars"} <= set(r[name])
        for name in ("bc", "ilql"):
            assert {"nll", "nll_original", "log_prob", "kl", "adv_sum", "finished",
                    "num_new_tokens"} <= set(r[name])
            assert 1 <= r[name]["num_new_tokens"] <= 8
        assert r["bc"]["adv_sum"] == 0.0 and r["ilql"]["adv_sum"] != 0.0
    assert set(summary["systems"]) == {"original", "bc", "ilql"}
    assert "vs_original" in summary["systems"]["ilql"]
    assert (out / E.SUMMARY_FILE).is_file()
    for f in ("report.md", "report.json", "reward_distributions.png", "impact_ratios.png"):
        assert (out / E.REPORT_DIR / f).is_file()

    # crash: the last row half-written; the first 4 rows must survive byte-identical
    lines = log.read_bytes().splitlines(keepends=True)
    kept = b"".join(lines[:4])
    log.write_bytes(kept + lines[4][:25])
    E.evaluate(eval_config(ilql_run, out))
    again = log.read_bytes()
    assert again.startswith(kept)
    assert [json.loads(l)["index"] for l in again.splitlines()] == list(range(6))
    # a different eval set in the same output dir is refused, not mixed in
    bad = eval_config(ilql_run, out, **{"data.eval": str(ilql_run / "data" / "jobs_train.jsonl")})
    with pytest.raises(ValueError, match="does not match"):
        E.evaluate(bad)


def test_hf_dir_checkpoint_and_errors(fixtures_dir, ilql_run, tmp_path):
    cfg = eval_config(fixtures_dir / "gpt2_tiny" / "hf", tmp_path / "hf", limit=2,
                      **{"data.eval": str(ilql_run / "data" / "jobs_eval.jsonl"),
                         "variants": "gpt2"})
    s = E.evaluate(cfg)
    assert set(s["systems"]) == {"original", "gpt2"}
    with pytest.raises(ValueError, match="NAME:ADV_WEIGHT"):
        E.parse_variants("a:b")
    with pytest.raises(ValueError, match="unique"):
        E.parse_variants("x:1,x:2")
    with pytest.raises(ValueError, match="NAME=PATH"):
        E.parse_named_paths("nopath")
    with pytest.raises(ValueError, match="data.eval"):
        E.evaluate(eval_config(fixtures_dir / "gpt2_tiny" / "hf", tmp_path / "x", variants="g"))
